"""Pruning: measured sparsity, shrinking and reloading, the 2:4 pattern, test-set isolation, bad input."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_synthetic_pubmedqa, run_script
from evaluation import UsageError, decoder_linears
from evaluation.finetune import finetune
from evaluation.modeling import random_model
from pruning import sparsify

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "pruning" / "pruning.py"


@pytest.fixture
def model():
    return random_model("tiny-random", seed=0, dtype=torch.float32, device=torch.device("cpu"))


def ids():
    return torch.tensor([[2, 11, 57, 300, 4000, 9], [2, 13, 17, 19, 23, 29]])


def run_in_process(base_args, *args) -> int:
    """The script as run from the command line, without paying the interpreter start-up again; its exit code."""
    return run_script("pruning.prune", [*base_args, *args])


@pytest.mark.parametrize("sparsity", [0.1, 0.3, 0.5, 0.7])
@pytest.mark.parametrize("strategy,options", [("unstructured", {"scope": "global"}),
                                              ("unstructured", {"scope": "layer"}),
                                              ("block", {"scope": "global", "block_size": 32}),
                                              ("block", {"scope": "layer", "block_size": 8})])
def test_masked_strategies_hit_the_requested_sparsity(model, strategy, options, sparsity):
    original = sparsify.weight_counts(model)
    if strategy == "unstructured":
        sparsify.prune_unstructured(model, sparsity, options["scope"])
    else:
        sparsify.prune_block(model, sparsity, options["block_size"], options["scope"])
    sparsify.make_permanent(model)
    measured = sparsify.measure_sparsity(model, original)
    assert abs(measured["sparsity_measured"] - sparsity) <= 0.01
    assert not any(torch.nn.utils.prune.is_pruned(m) for m in decoder_linears(model).values())


def test_block_pruning_zeros_whole_blocks(model):
    sparsify.prune_block(model, 0.5, 16, "global")
    sparsify.make_permanent(model)
    for m in decoder_linears(model).values():
        zero_tiles = sparsify.block_norms(m.weight, 16) == 0
        zeros = int((m.weight == 0).sum())
        assert zeros == int(zero_tiles.sum()) * 16 * 16  # every zero lies in an all-zero tile


def test_two_four_pattern_holds_in_every_group(model):
    original = sparsify.weight_counts(model)
    sparsify.prune_two_four(model)
    sparsify.make_permanent(model)
    for m in decoder_linears(model).values():
        groups = (m.weight != 0).reshape(m.weight.shape[0], -1, 4).sum(-1)
        assert bool((groups <= 2).all())
    assert abs(sparsify.measure_sparsity(model, original)["sparsity_measured"] - 0.5) <= 0.01
    assert sparsify.to_semi_structured(model)[0] is False  # CPU: no sparse kernels, and it says so


def test_structured_shrinks_runs_and_reloads(model, tmp_path):
    original = sparsify.weight_counts(model)
    shapes = sparsify.prune_structured(model, 0.3, heads_fraction=0.25)
    assert shapes == {"ffn_neurons_per_layer": 179, "attention_heads_per_layer": 3}
    for layer in model.biogpt.layers:
        assert layer.fc1.weight.shape == (179, 64) and layer.fc2.weight.shape == (64, 179)
        assert layer.self_attn.q_proj.weight.shape == (48, 64) and layer.self_attn.out_proj.weight.shape == (64, 48)
    measured = sparsify.measure_sparsity(model, original)
    assert abs(measured["sparsity_by_type"]["fc1"] - 0.3) <= 0.01
    with torch.no_grad():
        expected = model(ids()).logits
    model.save_pretrained(tmp_path)
    reloaded = sparsify.load_pruned(str(tmp_path))
    with torch.no_grad():
        assert torch.allclose(reloaded(ids()).logits, expected, atol=1e-5)


def test_ffn_only_structured_reloads_with_plain_from_pretrained(model, tmp_path):
    from transformers import AutoModelForCausalLM

    sparsify.prune_structured(model, 0.5, heads_fraction=0.0)
    with torch.no_grad():
        expected = model(ids()).logits
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.biogpt.layers[0].fc1.weight.shape == (128, 64)
    with torch.no_grad():
        assert torch.allclose(reloaded(ids()).logits, expected, atol=1e-5)


def test_recovery_keeps_the_mask_and_refuses_test_questions(model, tokenizer_dir, tmp_path):
    from evaluation import load_finetuning_data, load_test_questions, load_tokenizer

    data_dir = make_synthetic_pubmedqa(tmp_path)  # short contexts: a training step costs little on the CPU
    tokenizer = load_tokenizer("tiny-random", tokenizer_dir)
    train, test = load_finetuning_data(data_dir)[0], load_test_questions(data_dir)
    test_pmids = {q.pmid for q in test}
    assert train and not test_pmids & {q.pmid for q in train}
    original = sparsify.weight_counts(model)
    sparsify.prune_two_four(model)
    with pytest.raises(ValueError, match="test PMIDs"):
        finetune(model, tokenizer, train[:3] + test[:1], steps=1, test_pmids=test_pmids)
    before = {n: m.weight_orig.detach().clone() for n, m in decoder_linears(model).items()}
    finetune(model, tokenizer, train[:8], steps=2, test_pmids=test_pmids, lr=1e-3, batch_size=2)
    after = decoder_linears(model)
    assert any(not torch.equal(before[n], m.weight_orig) for n, m in after.items())  # it did train
    sparsify.make_permanent(model)
    assert sparsify.measure_sparsity(model, original)["sparsity_measured"] == pytest.approx(0.5)


@pytest.mark.e2e
def test_script_records_sparsity_and_finetuning(base_args, tmp_path):
    small = make_synthetic_pubmedqa(tmp_path)  # 20 train questions: the loop tokenizes every one
    code = run_in_process(base_args, "--data-dir", str(small), "--strategy", "structured",
                          "--sparsity", "0.3", "--finetune-steps", "2", "--run-name", "s",
                          "--save-dir", str(tmp_path / "saved"))
    assert code == 0
    results = json.loads((tmp_path / "results" / "s" / "results.json").read_text())
    m = results["technique"]
    assert abs(m["sparsity_by_type"]["fc1"] - 0.3) <= 0.01 and m["sparse_kernels"] is False
    assert m["finetune_test_pmids_seen"] == 0 and len(m["finetune_history"]) == 2
    # dense tiny-random: 3,925,760 (57,726 embedding rows x 64 + the rest); minus 77 of 256 neurons (fc1 rows +
    # bias, fc2 columns) in each of 2 layers
    assert results["model"]["parameters"] == 3_925_760 - 2 * (77 * 64 * 2 + 77)
    assert (tmp_path / "saved" / "model.safetensors").is_file()


@pytest.mark.e2e
def test_script_two_four_on_cpu_says_dense(capsys, base_args, tmp_path):
    assert run_in_process(base_args, "--strategy", "2:4", "--run-name", "t") == 0
    m = json.loads((tmp_path / "results" / "t" / "results.json").read_text())["technique"]
    assert m["sparse_kernels"] is False and "CPU" in m["sparse_kernels_reason"]
    assert "sparse kernels OFF" in capsys.readouterr().out
    assert m["sparsity_measured"] == pytest.approx(0.5)


@pytest.mark.parametrize("args,message", [
    (["--strategy", "unstructured", "--sparsity", "1.0"], "must be in [0, 1)"),
    (["--strategy", "unstructured", "--sparsity", "-0.1"], "must be in [0, 1)"),
    (["--strategy", "magic", "--sparsity", "0.5"], "invalid choice: 'magic'"),
    (["--strategy", "2:4", "--sparsity", "0.3"], "2:4 sparsity is 0.5"),
])
def test_bad_input_exits_2(capsys, base_args, args, message):
    assert run_in_process(base_args, *args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


@pytest.mark.e2e
def test_bad_input_exits_2_from_the_command_line(base_args):
    """`python pruning/pruning.py` itself: the script shadows its own package on sys.path and must still run."""
    out = subprocess.run([sys.executable, str(SCRIPT), *base_args, "--strategy", "structured", "--sparsity", "1.5"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and out.stderr.strip().splitlines()[-1] == "error: --sparsity must be in [0, 1), got 1.5"


def test_block_size_that_does_not_divide_is_refused(model):
    with pytest.raises(UsageError, match="does not divide"):
        sparsify.prune_block(model, 0.5, 48, "global")


@pytest.mark.e2e
def test_a_saved_head_pruned_model_runs_with_model_dir(base_args, tmp_path):
    """README: a --save-dir runs with --model DIR. With heads removed the config no longer describes q/k/v/out_proj;
    the shared loader builds them at their stored shapes, and the logits are the pruning run's."""
    saved = tmp_path / "saved"
    assert run_in_process(base_args, "--strategy", "structured", "--sparsity", "0.3", "--heads-fraction", "0.5",
                          "--save-dir", str(saved), "--run-name", "pruned", "--min-passes", "0") == 0
    assert run_script("baseline.baseline", [*base_args, "--model", str(saved), "--run-name", "reloaded",
                                            "--min-passes", "0"]) == 0
    runs = {name: json.loads((tmp_path / "results" / name / "results.json").read_text())
            for name in ("pruned", "reloaded")}
    assert runs["reloaded"]["model"]["parameters"] == runs["pruned"]["model"]["parameters"]
    assert runs["reloaded"]["run"]["weights"] == "random"

    def logits(name):
        with open(tmp_path / "results" / name / "per_question.csv") as f:
            return {r["pmid"]: [r[f"logit_{x}"] for x in ("yes", "no", "maybe")] for r in csv.DictReader(f)}
    assert logits("reloaded") == logits("pruned")
