"""precision_reduction on the CPU with tiny-random: every CPU precision runs, footprints order, fidelity, errors."""
import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "precision_reduction" / "precision_experiments.py"
sys.path.insert(0, str(ROOT))

from precision_reduction import precision_experiments  # noqa: E402
from precision_reduction.precisions import saved_preset  # noqa: E402

CPU_PRECISIONS = ["float32", "float16", "bfloat16", "int8", "int4", "float4"]
# 16-bit casts of the tiny model move its yes/no/maybe logits by ~1e-3: at most 1 of 6 predictions may flip.
MIN_16BIT_AGREEMENT = 80.0
MAX_16BIT_MEAN_KL = 1e-4


@pytest.fixture(scope="module")
def runs(tokenizer_dir, data_dir, tmp_path_factory):
    """Every CPU precision over the same 6 questions, in process; float32 first, the others compared with it."""
    out = tmp_path_factory.mktemp("precision")
    common = ["--model", "tiny-random", "--tokenizer-dir", tokenizer_dir, "--data-dir", data_dir, "--limit", "6",
              "--batch-size", "4", "--wandb", "disabled", "--output-dir", str(out)]
    results = {}
    for p in CPU_PRECISIONS:
        argv = common + ["--precision", p, "--run-name", p, "--int8-threshold", "5.5", "--double-quant"]
        if p != "float32":
            argv += ["--reference", str(out / "float32")]
        with mock.patch.object(sys, "argv", [str(SCRIPT)] + argv):
            precision_experiments.main()
        results[p] = json.loads((out / p / "results.json").read_text())
    return results


@pytest.mark.parametrize("precision", CPU_PRECISIONS)
def test_each_cpu_precision_writes_results(runs, precision):
    m = runs[precision]["metrics"]
    assert m["precision"] == precision and m["n"] == 6
    assert runs[precision]["config"]["options"]["precision"] == precision
    assert m["weight_bytes_measured"] > 0 and m["bytes_per_parameter"] > 0


def test_footprint_ordering(runs):
    size = {p: r["metrics"]["weight_bytes_measured"] for p, r in runs.items()}
    assert size["int4"] < size["int8"] < size["float16"] < size["float32"]
    assert size["float4"] < size["int8"] and size["bfloat16"] == size["float16"]
    assert runs["float32"]["metrics"]["bytes_per_parameter"] == pytest.approx(4.0)
    assert runs["int4"]["metrics"]["quant_state_bytes"] > 0  # absmax scales are counted


def test_options_recorded(runs):
    assert runs["int8"]["metrics"]["int8_threshold"] == 5.5
    assert runs["int8"]["metrics"]["compute_dtype"] == "bfloat16"
    assert runs["int4"]["metrics"]["double_quant"] is True and runs["int4"]["metrics"]["bnb_quant_type"] == "nf4"
    assert runs["float4"]["metrics"]["bnb_quant_type"] == "fp4"
    assert runs["float16"]["metrics"]["int8_threshold"] is None
    assert all(r["model"]["weights"] == "random" for r in runs.values())


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_16bit_agrees_with_float32(runs, precision):
    f = runs[precision]["metrics"]["fidelity"]
    assert f["n_compared"] == 6
    assert f["agreement"] >= MIN_16BIT_AGREEMENT
    assert f["mean_kl"] < MAX_16BIT_MEAN_KL


def test_saved_preset_holds_the_seeded_weights():
    from safetensors.torch import load_file

    from evaluation.modeling import random_model

    saved = load_file(str(saved_preset("tiny-random", 0) / "model.safetensors"))
    model = random_model("tiny-random", 0, torch.float32, torch.device("cpu"))
    for name, tensor in model.state_dict().items():
        if name in saved:
            assert torch.equal(saved[name], tensor), name
    assert "biogpt.embed_tokens.weight" in saved


def test_fp8_on_cpu_is_a_clear_error(tokenizer_dir, data_dir, tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", "tiny-random", "--tokenizer-dir", tokenizer_dir,
                           "--data-dir", data_dir, "--limit", "2", "--wandb", "disabled", "--device", "cpu",
                           "--output-dir", str(tmp_path / "out"), "--precision", "fp8"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --precision fp8") and "CPU" in last
    assert not (tmp_path / "out").exists()  # refused before any output was written


def test_unknown_precision_rejected_with_choices(capsys):
    with pytest.raises(SystemExit) as e:
        precision_experiments.make_parser().parse_args(["--precision", "int3"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'int3'" in err
    assert all(p in err for p in ["float32", "float16", "bfloat16", "int8", "int4", "float4", "fp8"])


def test_negative_int8_threshold_rejected(tokenizer_dir, data_dir, tmp_path):
    argv = [str(SCRIPT), "--model", "tiny-random", "--tokenizer-dir", tokenizer_dir, "--data-dir", data_dir,
            "--wandb", "disabled", "--output-dir", str(tmp_path), "--precision", "int8", "--int8-threshold", "-1"]
    with mock.patch.object(sys, "argv", argv), pytest.raises(SystemExit) as e:
        from evaluation import run_main
        run_main(precision_experiments.main)
    assert e.value.code == 2
