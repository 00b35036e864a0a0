"""quantization/: PTQ Linears really are int8 and smaller; QAT trains, converts, saves, evaluates; bad input exits 2."""
import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import make_synthetic_pubmedqa

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(f"quantization_{name}", ROOT / "quantization" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # puts this checkout's root first on sys.path
    return module


ptq = load_script("quant_int8_dynamic_eval")
qat = load_script("qat")
from quantization.int8_layers import decoder_linears, kernel_path, packed_weight_bytes, quantize_decoder  # noqa: E402

from evaluation import (RunConfig, evaluate, load_test_questions, load_tokenizer, load_train_questions,  # noqa: E402
                        weight_bytes)
from evaluation.modeling import random_model  # noqa: E402


def run_main(module, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [module.__file__, *argv])
    module.run_main(module.main)


def tiny_model():
    return random_model("tiny-random", 0, torch.float32, torch.device("cpu"))


@pytest.mark.parametrize("backend", ["torchao", "torch-ao"])
def test_dynamic_int8_linears_are_int8_and_smaller(backend):
    model = tiny_model()
    before = weight_bytes(model.biogpt.layers)
    x = torch.randint(4, 1000, (2, 16))
    with torch.inference_mode():
        reference = model(x).logits
    quantize_decoder(model, "dynamic-int8", torch.device("cpu"), cpu_backend=backend)
    linears = decoder_linears(model)
    assert len(linears) == 2 * 6  # q, k, v, out, fc1, fc2 in each of the 2 layers
    for _, m in linears:
        if backend == "torchao":
            assert type(m.weight).__name__ == "Int8Tensor" and m.weight.qdata.dtype == torch.int8
            assert m.weight.act_quant_kwargs is not None  # activations are quantized too, not weight-only
        else:
            assert isinstance(m, torch.ao.nn.quantized.dynamic.Linear) and m.weight().dtype == torch.qint8
    assert model.output_projection.weight.dtype == torch.float32  # the tied LM head stays float
    after = weight_bytes(model.biogpt.layers) + packed_weight_bytes(model)
    assert after < 0.35 * before  # int8 instead of float32, plus scales
    with torch.inference_mode():
        out = model(x).logits
    assert (out - reference).abs().max() < 0.5 and not torch.equal(out, reference)
    assert kernel_path(model)["decoder_linears"][0]["count"] == 12


def test_weight_only_int8_keeps_float_activations():
    model = tiny_model()
    quantize_decoder(model, "weight-only-int8", torch.device("cpu"))
    w = decoder_linears(model)[0][1].weight
    assert type(w).__name__ == "Int8Tensor" and w.qdata.dtype == torch.int8 and w.act_quant_kwargs is None


def test_ptq_script_writes_results_with_kernel_path(base_args, tmp_path, monkeypatch):
    run_main(ptq, [*base_args, "--run-name", "dyn"], monkeypatch)
    run = tmp_path / "results" / "dyn"
    results = json.loads((run / "results.json").read_text())
    q = results["metrics"]["quantization"]
    assert q["scheme"] == "dynamic-int8" and q["backend"] == "torch-ao"  # the CPU default
    kind = q["kernel_path"]["decoder_linears"][0]
    assert kind["module"].startswith("torch.ao.nn.quantized.dynamic") and kind["storage"] == {"weight": "torch.qint8"}
    assert q["quantized_weight_bytes"] < q["float_weight_bytes"]
    assert len(json.loads((run / "predictions.json").read_text())) == 6


@pytest.mark.parametrize("argv, message", [
    (["--scheme", "int3"], "invalid choice"),
    (["--scheme", "weight-only-int4", "--device", "cpu"], "weight-only-int4 is not supported on cpu"),
])
def test_ptq_bad_scheme_is_a_clear_error(argv, message, base_args, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(ptq, [*base_args, *argv], monkeypatch)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be a positive integer, got 0"),
    (["--steps", "-5"], "--steps must be a positive integer, got -5"),
    (["--weights", "int2"], "invalid choice"),
    (["--bf16-autocast", "--device", "cpu"], "CUDA option"),
])
def test_qat_bad_input_is_a_clear_error(argv, message, base_args, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        run_main(qat, [*base_args, *argv], monkeypatch)
    assert e.value.code == 2 and message in capsys.readouterr().err


@pytest.fixture
def short_data(tmp_path):
    """Synthetic PubMedQA (short contexts) so that a few training steps stay fast on the CPU."""
    (tmp_path / "pubmedqa").mkdir()
    return str(make_synthetic_pubmedqa(tmp_path / "pubmedqa"))


def test_qat_trains_converts_saves_and_never_sees_test_pmids(tokenizer_dir, short_data, tmp_path, monkeypatch):
    seen = {}
    real_finetune = qat.finetune

    def spy(model, tokenizer, train, **kwargs):
        seen["train"], seen["test_pmids"] = {q.pmid for q in train}, kwargs["test_pmids"]
        return real_finetune(model, tokenizer, train, **kwargs)

    monkeypatch.setattr(qat, "finetune", spy)
    argv = ["--model", "tiny-random", "--tokenizer-dir", tokenizer_dir, "--data-dir", short_data, "--limit", "6",
            "--batch-size", "4", "--wandb", "disabled", "--output-dir", str(tmp_path / "results"),
            "--run-name", "qat", "--steps", "6", "--lr", "1e-3", "--train-batch-size", "4", "--weights", "int4"]
    run_main(qat, argv, monkeypatch)

    all_test = {q.pmid for q in load_test_questions(short_data)}
    assert seen["test_pmids"] == all_test  # every test PMID, not only the --limit ones
    assert seen["train"] == {q.pmid for q in load_train_questions(short_data)} and not seen["train"] & all_test

    run = tmp_path / "results" / "qat"
    q = json.loads((run / "results.json").read_text())["metrics"]["quantization"]
    losses = [h["train_loss"] for h in q["train_history"]]
    assert len(losses) == 6 and losses[-1] < losses[0] - 0.5
    assert q["converted"] and q["kernel_path"]["decoder_linears"][0]["weight_tensor"] == "IntxUnpackedToInt8Tensor"
    assert q["quantized_weight_bytes"] < q["float_weight_bytes"]
    assert len(json.loads((run / "predictions.json").read_text())) == 6

    # the safetensors checkpoint loads back (no pickle) into the same int4 model
    model = qat.load_checkpoint(run / "model")
    w = decoder_linears(model)[0][1].weight
    assert type(w).__name__ == "IntxUnpackedToInt8Tensor" and w.qdata.abs().max() <= 8  # int4 range
    assert model.output_projection.weight is model.biogpt.embed_tokens.weight
    cfg = RunConfig(limit=6, batch_size=4)
    _, rows, _ = evaluate(model, load_tokenizer("tiny-random", tokenizer_dir), load_test_questions(short_data, 6), cfg)
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
