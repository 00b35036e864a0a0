"""precision_reduction on the CPU with tiny-random: every CPU precision runs, footprints order, fidelity, errors."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import run_script
from precision_reduction.precision_experiments import PrecisionOptions
from precision_reduction.precisions import saved_preset

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "precision_reduction" / "precision_experiments.py"
MODULE = "precision_reduction.precision_experiments"

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
        argv = common + ["--precision", p, "--run-name", p]
        argv += {"int8": ["--int8-threshold", "5.5"], "int4": ["--double-quant"], "float4": ["--double-quant"]}.get(p, [])
        if p != "float32":
            argv += ["--reference", str(out / "float32")]
        assert run_script(MODULE, argv) == 0, p
        results[p] = json.loads((out / p / "results.json").read_text())
    return results


@pytest.mark.parametrize("precision", CPU_PRECISIONS)
@pytest.mark.e2e
def test_each_cpu_precision_writes_results(runs, precision):
    r = runs[precision]
    assert r["config"]["options"]["precision"] == precision and r["config"]["variant"] == precision
    assert r["metrics"]["n"] == 6 and r["model"]["footprint_bytes"] > 0 and r["model"]["bytes_per_parameter"] > 0


@pytest.mark.e2e
def test_footprint_ordering(runs):
    size = {p: r["model"]["footprint_bytes"] for p, r in runs.items()}
    assert size["int4"] < size["int8"] < size["float16"] < size["float32"]
    assert size["float4"] < size["int8"] and size["bfloat16"] == size["float16"]
    assert runs["float32"]["model"]["bytes_per_parameter"] == pytest.approx(4.0)
    # 4-bit weights count their absmax scales: more than half a byte per weight, less than one
    assert 0.5 < runs["int4"]["model"]["bytes_per_parameter"] < 2.5


@pytest.mark.e2e
def test_options_recorded_only_where_used(runs):
    options = {p: r["config"]["options"] for p, r in runs.items()}
    assert options["int8"]["int8_threshold"] == 5.5 and options["int8"]["compute_dtype"] == "bfloat16"
    assert options["int4"]["double_quant"] is True and options["int4"]["int8_threshold"] is None
    assert options["float32"]["compute_dtype"] is None and options["float16"]["int8_threshold"] is None
    assert runs["float32"]["config"]["dtype"] == "float32" and runs["int4"]["config"]["dtype"] == "bfloat16"
    assert all(r["run"]["weights"] == "random" for r in runs.values())


@pytest.mark.parametrize("precision", ["int8", "int4", "float4"])
@pytest.mark.e2e
def test_bitsandbytes_converts_every_decoder_linear(runs, precision):
    linears = runs[precision]["technique"]["linears"]
    assert linears["converted"] == linears["decoder_linears"] == 12
    assert runs[precision]["technique"]["quantized_while_loading"] is True
    assert runs[precision]["metrics"]["setup_s"] > 0  # the quantizing load is the technique's own step


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
@pytest.mark.e2e
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


@pytest.mark.e2e
def test_fp8_on_cpu_is_a_clear_error(tokenizer_dir, data_dir, tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--model", "tiny-random", "--tokenizer-dir", tokenizer_dir,
                           "--data-dir", data_dir, "--limit", "2", "--wandb", "disabled", "--device", "cpu",
                           "--output-dir", str(tmp_path / "out"), "--precision", "fp8"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --precision fp8") and "CPU" in last
    assert not (tmp_path / "out").exists()  # refused before any output was written


def test_unknown_precision_rejected_with_choices(tokenizer_dir, data_dir, tmp_path, capsys):
    assert run_script(MODULE, ["--precision", "int3"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'int3'" in err
    assert all(p in err for p in ["float32", "float16", "bfloat16", "int8", "int4", "float4", "fp8"])


@pytest.mark.parametrize("argv, message", [
    (["--precision", "int8", "--int8-threshold", "-1"], "--int8-threshold must be >= 0"),
    (["--precision", "float16", "--compute-dtype", "bfloat16"], "--compute-dtype applies to quantized"),
    (["--precision", "bfloat16", "--double-quant"], "--double-quant applies to"),
])
def test_bad_or_unused_options_refused(argv, message, capsys):
    assert run_script(MODULE, argv) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]


def test_options_dataclass_fills_defaults_where_used():
    assert PrecisionOptions(precision="int8").int8_threshold == 6.0
    assert PrecisionOptions(precision="int4").compute_dtype == "bfloat16"
    assert PrecisionOptions(precision="float32").compute_dtype is None


@pytest.mark.e2e
def test_bitsandbytes_int8_cast_notice_is_said_once(tokenizer_dir, data_dir, tmp_path):
    """bitsandbytes logs its CPU input cast on every call of every Linear (108 lines for three passes over 6
    questions on tiny-random): the user sees it once."""
    r = subprocess.run([sys.executable, str(SCRIPT), "--precision", "int8", "--model", "tiny-random",
                        "--tokenizer-dir", tokenizer_dir, "--data-dir", data_dir, "--limit", "6", "--batch-size", "4",
                        "--min-passes", "1", "--wandb", "disabled", "--output-dir", str(tmp_path / "out")],
                       cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    said = [line for line in (r.stdout + r.stderr).splitlines() if "MatMul8bitLt: inputs will be cast" in line]
    assert len(said) == 1, len(said)
