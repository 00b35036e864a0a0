"""attention_table: eager and SDPA compute the same thing, the switch between them is real, the table is written."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from evaluation.modeling import random_model
from tensor_rewriting import attention_table as at

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tensor_rewriting" / "attention_table.py"

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny():
    torch.set_grad_enabled(False)
    yield random_model("tiny-random", 0, torch.float32, CPU)
    torch.set_grad_enabled(True)


def run_script(argv, monkeypatch):
    """The script's main() in this process, as `python attention_table.py ARGV` runs it (imports paid once)."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *argv])
    at.run_main(at.main)


def test_script_writes_the_table(tmp_path, monkeypatch):
    run_script(["--model", "tiny-random", "--layers", "1", "--batch-sizes", "2", "--seq-lens", "32",
                "--repeats", "2", "--out", str(tmp_path)], monkeypatch)
    header = (tmp_path / "table.md").read_text().split("\n| batch_size")[1].splitlines()[0]
    for column in ("seq_len", "per-token latency eager (ms)", "per-token latency SDPA (ms)", "speedup (%)",
                   "mem eager (MB)", "mem SDPA (MB)", "mem saved (%)", "max abs Δ hidden (tol)"):
        assert f"| {column} |" in header
    report = json.loads((tmp_path / "table.json").read_text())
    assert [(r["batch_size"], r["seq_len"], r["mask"]) for r in report["rows"]] == [(2, 32, "none"),
                                                                                    (2, 32, "padded")]
    for row in report["rows"]:
        assert row["agreement"]["passed"]
        assert len(row["eager"]["samples_ms"]) == len(row["sdpa"]["samples_ms"]) == 2
    assert report["meta"]["environment"]["device_name"] and report["meta"]["environment"]["torch_threads"]
    assert "--seq-lens 32" in report["meta"]["command"]
    assert report["meta"]["layers"] == 1 and report["meta"]["preset_layers"] == 2


@pytest.mark.parametrize("padded", [False, True])
def test_eager_and_sdpa_give_the_same_logits(tiny, padded):
    inputs = at.make_inputs(2, 40, padded, (0.10, 0.25), tiny.config, torch.Generator().manual_seed(1), CPU)
    real = inputs["attention_mask"].bool()
    assert bool(real.all()) != padded
    logits, outputs = {}, {}
    for implementation in at.IMPLEMENTATIONS:
        at.check_attention_path(tiny, implementation, inputs)
        logits[implementation] = tiny(**inputs, use_cache=False).logits[real]
        outputs[implementation] = at.decoder_forward(tiny, inputs)
    torch.testing.assert_close(logits["sdpa"], logits["eager"], atol=1e-4, rtol=1e-4)
    check = at.agreement(tiny, outputs, inputs, "float32")
    assert check["passed"] and check["argmax_agreement_pct"] == 100


def test_a_switch_that_does_nothing_is_caught(tiny, monkeypatch):
    probe = at.make_inputs(1, 8, False, (0, 0), tiny.config, torch.Generator().manual_seed(0), CPU)
    tiny.set_attn_implementation("sdpa")
    monkeypatch.setattr(tiny, "set_attn_implementation", lambda name: None)
    with pytest.raises(RuntimeError, match="asked for eager attention"):
        at.check_attention_path(tiny, "eager", probe)


def test_peak_memory_sees_the_eager_score_matrix(tiny):
    # eager materialises [batch, heads, T, T] scores and probabilities; SDPA's CPU kernel works in blocks
    inputs = at.make_inputs(1, 512, False, (0, 0), tiny.config, torch.Generator().manual_seed(0), CPU)
    peaks = {}
    for implementation in at.IMPLEMENTATIONS:
        tiny.set_attn_implementation(implementation)
        peaks[implementation] = at.forward_with_peak(tiny, inputs, CPU)[1]
    scores = 4 * 512 * 512 * 4  # heads x T x T float32
    assert peaks["eager"] - peaks["sdpa"] >= scores


def test_allocation_peak_follows_time_order():
    events = [SimpleNamespace(start_ns=lambda t=t: t, nbytes=lambda n=n: n)
              for t, n in [(3, -100), (1, 100), (2, 50), (4, 30)]]
    assert at.allocation_peak(events) == 150


@pytest.mark.parametrize("argv, message", [
    (["--model", "gpt2"], "argument --model: invalid choice: 'gpt2'"),
    (["--batch-sizes", "1", "0"], "--batch-sizes must be positive integers, got 0"),
    (["--seq-lens", "-4"], "--seq-lens must be positive integers, got -4"),
    (["--model", "tiny-random", "--seq-lens", "4096"], "--seq-lens 4096 is beyond tiny-random's 2048 positions"),
    (["--repeats", "0"], "--warmup and --repeats must be at least 1"),
    (["--model", "biogpt-base-random", "--layers", "25"], "--layers must be between 1 and biogpt-base-random's 24"),
])
def test_bad_input_exits_2_with_one_line(argv, message, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_script(argv, monkeypatch)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
