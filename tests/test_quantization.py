"""quantization/: PTQ Linears really are int8 and smaller; QAT trains, converts, saves, evaluates; bad input exits 2."""
import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import make_synthetic_pubmedqa, run_script
from evaluation import (RunConfig, UsageError, decoder_linears, evaluate, footprint_bytes, linear_conversion,
                        load_test_questions, load_tokenizer, load_finetuning_data, require_all_converted)
from evaluation.modeling import random_model
from quantization import qat
from quantization.int8_layers import quantize_decoder

ROOT = Path(__file__).resolve().parents[1]
PTQ = "quantization.quant_int8_dynamic_eval"
QAT = "quantization.qat"


def tiny_model():
    return random_model("tiny-random", 0, torch.float32, torch.device("cpu"))


@pytest.mark.parametrize("backend", ["torchao", "torch-ao"])
def test_dynamic_int8_linears_are_int8_and_smaller(backend):
    model = tiny_model()
    before = footprint_bytes(model)
    x = torch.randint(4, 1000, (2, 16))
    with torch.inference_mode():
        reference = model(x).logits
    quantize_decoder(model, "dynamic-int8", torch.device("cpu"), cpu_backend=backend)
    linears = decoder_linears(model)
    assert len(linears) == 2 * 6  # q, k, v, out, fc1, fc2 in each of the 2 layers
    for m in linears.values():
        if backend == "torchao":
            assert type(m.weight).__name__ == "Int8Tensor" and m.weight.qdata.dtype == torch.int8
            assert m.weight.act_quant_kwargs is not None  # activations are quantized too, not weight-only
        else:
            assert isinstance(m, torch.ao.nn.quantized.dynamic.Linear) and m.weight().dtype == torch.qint8
    assert model.output_projection.weight.dtype == torch.float32  # the tied LM head stays float
    linear_weights = sum(m.in_features * m.out_features for m in linears.values())
    # int8 instead of float32 for the decoder weights: 3 bytes saved per weight, less the per-row scales added
    # (torch.ao: float64 scale and int64 zero point per output channel, 18 KiB on this tiny model)
    assert 2.5 * linear_weights < before - footprint_bytes(model) < 3 * linear_weights
    with torch.inference_mode():
        out = model(x).logits
    assert (out - reference).abs().max() < 0.5 and not torch.equal(out, reference)
    assert linear_conversion(model)["converted"] == 12


def test_dynamic_int8_footprint_counts_the_packed_tensors_own_bytes():
    """torch.ao keeps int8 weights in packed params, which are neither parameters nor buffers."""
    model = tiny_model()
    quantize_decoder(model, "dynamic-int8", torch.device("cpu"), cpu_backend="torch-ao")
    packed = 0
    for m in decoder_linears(model).values():
        w, b = m._weight_bias()
        packed += (w.int_repr().nbytes + w.q_per_channel_scales().nbytes + w.q_per_channel_zero_points().nbytes
                   + b.nbytes)
    rest = sum(t.nbytes for t in list(model.parameters()) + list(model.buffers()))  # embeddings, norms (tied once)
    assert packed > 0 and footprint_bytes(model) == rest + packed


def test_a_scheme_that_skips_layers_is_refused():
    model = tiny_model()
    quantize_decoder(model, "weight-only-int8", torch.device("cpu"))
    assert require_all_converted(model, "weight-only-int8")["converted"] == 12
    layer = model.biogpt.layers[0]
    layer.fc1 = torch.nn.Linear(layer.fc1.in_features, layer.fc1.out_features)  # one Linear left in float
    assert linear_conversion(model)["converted"] == 11
    with pytest.raises(UsageError, match="converted only 11 of 12 decoder Linears"):
        require_all_converted(model, "weight-only-int8")


def test_weight_only_int8_keeps_float_activations():
    model = tiny_model()
    quantize_decoder(model, "weight-only-int8", torch.device("cpu"))
    w = next(iter(decoder_linears(model).values())).weight
    assert type(w).__name__ == "Int8Tensor" and w.qdata.dtype == torch.int8 and w.act_quant_kwargs is None


@pytest.mark.e2e
def test_ptq_script_writes_results_with_conversion_record(base_args, tmp_path):
    assert run_script(PTQ, [*base_args, "--run-name", "dyn"]) == 0
    run = tmp_path / "results" / "dyn"
    results = json.loads((run / "results.json").read_text())
    assert results["config"]["options"] == {"scheme": "dynamic-int8", "group_size": None, "cpu_backend": None}
    t = results["technique"]
    assert t["backend"] == "torch-ao"  # the CPU default
    assert t["linears"]["converted"] == t["linears"]["decoder_linears"] == 12
    assert list(t["linears"]["kinds"]) == ["torch.ao.nn.quantized.dynamic.modules.linear.Linear / Tensor"]
    assert results["model"]["bytes_per_parameter"] < 4
    assert len(json.loads((run / "predictions.json").read_text())) == 6


@pytest.mark.parametrize("argv, message", [
    (["--scheme", "int3"], "invalid choice"),
    (["--scheme", "weight-only-int4", "--device", "cpu"], "weight-only-int4 is not supported on cpu"),
    (["--scheme", "dynamic-int8", "--group-size", "64"], "--group-size applies to --scheme weight-only-int4 only"),
])
def test_ptq_bad_scheme_is_a_clear_error(argv, message, base_args, capsys):
    assert run_script(PTQ, [*base_args, *argv]) == 2
    assert message in capsys.readouterr().err


def test_int4_default_group_size_divides_biogpt_large():
    from quantization.quant_int8_dynamic_eval import PTQOptions

    g = PTQOptions(scheme="weight-only-int4").group_size
    assert 1600 % g == 0 and 6400 % g == 0


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be a positive integer, got 0"),
    (["--steps", "-5"], "--steps must be a positive integer, got -5"),
    (["--weights", "int2"], "invalid choice"),
    (["--bf16-autocast", "--device", "cpu"], "CUDA option"),
])
def test_qat_bad_input_is_a_clear_error(argv, message, base_args, capsys):
    assert run_script(QAT, [*base_args, *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.fixture
def short_data(tmp_path):
    """Synthetic PubMedQA (short contexts) so that a few training steps stay fast on the CPU."""
    (tmp_path / "pubmedqa").mkdir()
    return str(make_synthetic_pubmedqa(tmp_path / "pubmedqa"))


@pytest.mark.e2e
def test_qat_trains_converts_saves_and_never_sees_test_pmids(tokenizer_dir, short_data, tmp_path, monkeypatch):
    import evaluation.finetune

    seen = {}
    real_finetune = evaluation.finetune.finetune

    def spy(model, tokenizer, train, **kwargs):
        seen["train"], seen["test_pmids"] = {q.pmid for q in train}, kwargs["test_pmids"]
        return real_finetune(model, tokenizer, train, **kwargs)

    monkeypatch.setattr(evaluation.finetune, "finetune", spy)  # the script imports it when it runs
    argv = ["--model", "tiny-random", "--tokenizer-dir", tokenizer_dir, "--data-dir", short_data, "--limit", "6",
            "--batch-size", "4", "--wandb", "disabled", "--output-dir", str(tmp_path / "results"),
            "--run-name", "qat", "--steps", "6", "--lr", "1e-3", "--train-batch-size", "4", "--weights", "int4"]
    assert run_script(QAT, argv) == 0

    all_test = {q.pmid for q in load_test_questions(short_data)}
    assert seen["test_pmids"] == all_test  # every test PMID, not only the --limit ones
    assert seen["train"] == {q.pmid for q in load_finetuning_data(short_data)[0]} and not seen["train"] & all_test

    run = tmp_path / "results" / "qat"
    results = json.loads((run / "results.json").read_text())
    q = results["technique"]
    assert results["config"]["options"]["weights"] == "int4" and results["run"]["weights"] == "random"
    assert results["config"]["variant"] == "qat-da8w4-g32"
    losses = [h["train_loss"] for h in q["train_history"]]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5
    assert q["converted"] and q["linears"]["converted"] == 12
    assert list(q["linears"]["kinds"]) == ["torch.nn.modules.linear.Linear / IntxUnpackedToInt8Tensor"]
    assert len(json.loads((run / "predictions.json").read_text())) == 6
    # readable by others, as the run directory is (safetensors writes 0600)
    modes = {str(p.relative_to(run)): p.stat().st_mode & 0o777 for p in run.rglob("*")}
    assert modes["model/model.safetensors"] == 0o644 and set(modes.values()) <= {0o644, 0o755}, modes

    # the safetensors checkpoint loads back (no pickle) into the same int4 model
    model = qat.load_checkpoint(run / "model")
    w = next(iter(decoder_linears(model).values())).weight
    assert type(w).__name__ == "IntxUnpackedToInt8Tensor" and w.qdata.abs().max() <= 8  # int4 range
    assert model.output_projection.weight is model.biogpt.embed_tokens.weight
    from evaluation.resolve import resolve

    cfg = RunConfig(model="tiny-random", tokenizer_dir=tokenizer_dir, data_dir=short_data, limit=6, batch_size=4,
                    wandb="disabled")
    _, rows, _ = evaluate(model, cfg, resolve(cfg, torch.device("cpu"), tmp_path / "unused"))
    with open(run / "per_question.csv") as f:
        saved = {r["pmid"]: r for r in csv.DictReader(f)}
    for r in rows:
        assert abs(r["logit_yes"] - float(saved[r["pmid"]]["logit_yes"])) < 1e-4


def test_finetune_refuses_test_questions(tokenizer_dir, short_data):
    from evaluation.finetune import finetune

    test = load_test_questions(short_data)
    with pytest.raises(ValueError, match="test PMIDs in the fine-tuning data"):
        finetune(tiny_model(), load_tokenizer("tiny-random", tokenizer_dir), test[:2], steps=1,
                 test_pmids={q.pmid for q in test})
