"""benchmarks/: each one runs end to end on tiny-random, quietly, and writes its file; the shared timing helpers;
attention_table's kernels compute the same thing, its switch between them is real, its memory peak sees them."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from benchmarks import attention_table as at
from benchmarks import interleaved, paired_speedup
from conftest import run_script
from evaluation.modeling import random_model
from evaluation.telemetry import Clock

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def run_benchmark(*argv) -> subprocess.CompletedProcess:
    """`python ARGV` from the repo root, as a user runs a benchmark (`-m benchmarks.NAME` or `benchmarks/NAME.py`):
    a process of its own, so torch.profiler's logging starts as it does for them. The repo root on PYTHONPATH
    stands for the editable install (pip install -r requirements.txt) that makes `benchmarks` importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, *map(str, argv)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "USDT" not in proc.stdout + proc.stderr  # kineto's profiler_start/stop lines (benchmarks.cpu_profiler)
    return proc


@pytest.mark.e2e
def test_attention_table_writes_its_table_quietly(tmp_path):
    run_benchmark("-m", "benchmarks.attention_table", "--model", "tiny-random", "--layers", "1", "--batch-sizes", "2",
                  "--seq-lens", "32", "--repeats", "2", "--out", tmp_path)
    table = (tmp_path / "table.md").read_text().split("\n| batch_size")[1].splitlines()
    assert table[0].strip(" |").split(" | ") == at.COLUMNS[1:] and len(table) == 4  # header, rule, 2 cells
    report = json.loads((tmp_path / "table.json").read_text())
    assert [(r["batch_size"], r["seq_len"], r["mask"]) for r in report["rows"]] == [(2, 32, "none"),
                                                                                    (2, 32, "padded")]
    for row in report["rows"]:
        assert row["agreement"]["passed"] and row["paired_speedup"]["n_rounds"] == 2
        assert len(row["eager"]["samples_ms"]) == len(row["sdpa"]["samples_ms"]) == 2
    meta = report["meta"]
    assert meta["environment"]["device_name"] and meta["environment"]["cpu_isa"]
    assert "--seq-lens 32" in meta["command"] and meta["options"]["repeats"] == 2
    assert meta["layers"] == 1 and meta["preset_layers"] == 2


@pytest.mark.e2e
def test_dynamic_int8_times_the_run_batches_quietly(base_args, tmp_path):
    out = tmp_path / "int8.json"
    run_benchmark("benchmarks/dynamic_int8.py", *base_args, "--limit", "2", "--batch-size", "2", "--rounds", "2",
                  "--out", out)
    report = json.loads(out.read_text())
    assert report["questions"] == 2 and report["model"]["weights"] == "random" and report["environment"]["torch"]
    assert list(report["forward"]) == ["fp32", "torchao", "torch-ao"]
    for r in report["forward"].values():
        assert len(r["samples_ms"]) == 2 and r["ms"]["p50"] > 0 and r["top_ops"][0]["self_ms"] > 0
    assert report["forward"]["fp32"]["speedup_vs_fp32"]["value"] == 1
    assert any(op["op"] == "quantized::linear_dynamic" for op in report["forward"]["torch-ao"]["top_ops"])


@pytest.mark.e2e
def test_dynamic_int8_on_single_linears(tmp_path):
    out = tmp_path / "linears.json"
    assert run_script("benchmarks.dynamic_int8", ["--model", "tiny-random", "--linear-tokens", "8", "--rounds", "1",
                                                  "--out", str(out)]) == 0
    linears = json.loads(out.read_text())["linears"]
    assert list(linears) == ["64->64", "64->256", "256->64"]  # tiny-random: hidden 64, FFN 256
    assert all(list(shape) == ["fp32", "torchao", "torch-ao"] for shape in linears.values())


@pytest.mark.parametrize("argv, message", [
    (["--model", "microsoft/BioGPT-Large-PubMedQA", "--linear-tokens", "8"], "--linear-tokens needs a preset model"),
    (["--rounds", "0"], "--rounds and --linear-tokens must be at least 1"),
])
def test_dynamic_int8_bad_input(argv, message, capsys):
    assert run_script("benchmarks.dynamic_int8", argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.e2e
def test_tvm_layers_projects_from_two_cuts(base_args, tmp_path):
    pytest.importorskip("tensor_rewriting.tvm_relax")
    out = tmp_path / "layers.json"
    run_benchmark("benchmarks/tvm_layers.py", *base_args, "--limit", "2", "--batch-size", "2", "--rounds", "1",
                  "--out", out)
    r = json.loads(out.read_text())
    assert [c["layers"] for c in r["cuts"]] == [1, 2] and r["model"]["weights"] == "random"
    for cut in r["cuts"]:
        assert cut["shape"][0] in (1, 2) and cut["tvm_compilations"] == 1 and cut["max_abs_logit_diff"] < 1e-4
        assert len(cut["samples_ms"]["eager"]) == len(cut["samples_ms"]["tvm"]) == 1
    for backend in ("eager", "tvm"):
        one, two = (c[f"{backend}_s"] for c in r["cuts"])
        p = r["projected"][backend]
        assert p["per_layer_s"] == pytest.approx(two - one)
        assert r["layers"] == 2 and p["full_depth_s"] == pytest.approx(two)  # tiny-random: the 2-layer cut itself


def test_tvm_layers_refuses_a_real_checkpoint(base_args, capsys):
    argv = [a if a != "tiny-random" else "microsoft/BioGPT-Large-PubMedQA" for a in base_args]
    assert run_script("benchmarks.tvm_layers", argv) == 2
    assert "must be a preset" in capsys.readouterr().err


def test_interleaved_rotates_the_order_every_round():
    order = []
    calls = {name: (lambda name=name: order.append(name)) for name in "abc"}
    samples = interleaved(calls, 3, Clock(CPU), before=lambda name: order.append(name.upper()))
    assert "".join(order) == "AaBbCc" + "BbCcAa" + "CcAaBb"
    assert {name: len(ms) for name, ms in samples.items()} == {"a": 3, "b": 3, "c": 3}


def test_paired_speedup_is_taken_round_by_round():
    """Rounds 2 and 3 ran at half speed for both: their ratios are as good as the others', and the interval is
    exactly 2 (a speed-up over passes pooled apart would see a 2x spread)."""
    drifting = paired_speedup([10, 20, 20, 10, 10, 10], [5, 10, 10, 5, 5, 5], "--rounds")
    assert drifting["value"] == pytest.approx(2) and drifting["ci_low"] == pytest.approx(2) == drifting["ci_high"]
    few = paired_speedup([10], [5], "--rounds")
    assert few["value"] == 2 and few["ci_low"] is None and "--rounds" in few["reason"]


@pytest.fixture(scope="module")
def tiny():
    torch.set_grad_enabled(False)
    yield random_model("tiny-random", 0, torch.float32, CPU)
    torch.set_grad_enabled(True)


def make_batch(length: int, padded: bool, model, seed: int = 0, rows: int = 2):
    return at.make_batch(rows, length, padded, (0.10, 0.25), model.config, torch.Generator().manual_seed(seed), CPU)


@pytest.mark.parametrize("padded", [False, True])
def test_eager_and_sdpa_give_the_same_logits(tiny, padded):
    batch = make_batch(40, padded, tiny, seed=1)
    real = batch.attention_mask.bool()
    assert bool(real.all()) != padded
    logits, outputs = {}, {}
    for implementation in at.IMPLEMENTATIONS:
        at.check_attention_path(tiny, implementation, batch)
        logits[implementation] = tiny(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                      position_ids=batch.position_ids, use_cache=False).logits[real]
        outputs[implementation] = at.decoder_forward(tiny, batch)
    torch.testing.assert_close(logits["sdpa"], logits["eager"], atol=1e-4, rtol=1e-4)
    check = at.agreement(tiny, outputs, batch, "float32")
    assert check["passed"] and check["argmax_agreement_pct"] == 100


def test_a_switch_that_does_nothing_is_caught(tiny, monkeypatch):
    probe = make_batch(8, False, tiny, rows=1)
    tiny.set_attn_implementation("sdpa")
    monkeypatch.setattr(tiny, "set_attn_implementation", lambda name: None)
    with pytest.raises(RuntimeError, match="asked for eager attention"):
        at.check_attention_path(tiny, "eager", probe)


def test_peak_memory_sees_the_eager_score_matrix(tiny):
    # eager materialises [batch, heads, T, T] scores and probabilities; SDPA's CPU kernel works in blocks
    batch = make_batch(512, False, tiny, rows=1)
    peaks = {}
    for implementation in at.IMPLEMENTATIONS:
        tiny.set_attn_implementation(implementation)
        peaks[implementation] = at.forward_with_peak(tiny, batch, CPU)[1]
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
    (["--pad-range", "0.3", "0.2"], "--pad-range must satisfy 0 <= LOW <= HIGH < 1, got 0.3 0.2"),
    (["--model", "biogpt-base-random", "--layers", "25"], "--layers must be between 1 and biogpt-base-random's 24"),
])
def test_attention_table_bad_input_exits_2(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["attention_table.py", *argv])
    with pytest.raises(SystemExit) as exit_:
        at.run_main(at.main)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    if "invalid choice" not in message:  # argparse's own errors come with its usage line
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


@pytest.mark.e2e
@pytest.mark.parametrize("mode", [[], ["--processes"]], ids=["one-process", "processes"])
def test_harness_overhead_times_both_contenders_round_by_round(base_args, tmp_path, mode):
    out = tmp_path / "overhead.json"
    args = [a for a in base_args if a not in ("--wandb", "disabled")]
    run_benchmark("-m", "benchmarks.harness_overhead", *args, "--limit", "4", "--rounds", "2", *mode, "--out", out)
    r = json.loads(out.read_text())
    assert r["mode"] == ("processes" if mode else "one process") and r["model"]["weights"] == "random"
    assert [len(r["pass_s"][k]["samples"]) for k in ("plain", "harness")] == [2, 2]
    ratio = r["harness_over_plain"]
    assert ratio["timing"] == "paired" and ratio["value"] == pytest.approx(
        (r["pass_s"]["harness"]["samples"][0] / r["pass_s"]["plain"]["samples"][0]
         * r["pass_s"]["harness"]["samples"][1] / r["pass_s"]["plain"]["samples"][1]) ** 0.5)


def test_the_plain_loop_gives_the_benchs_logits(tokenizer_dir, data_dir):
    """The loop harness_overhead times against the bench does the bench's work: the same answer logits."""
    from benchmarks.plain_loop import plain_pass
    from evaluation import RunConfig
    from evaluation.answering import answer_logits
    from evaluation.resolve import resolve

    cfg = RunConfig(model="tiny-random", tokenizer_dir=tokenizer_dir, data_dir=data_dir, limit=5, batch_size=4)
    run = resolve(cfg, CPU, ROOT / "unused")
    model = random_model("tiny-random", 0, torch.float32, CPU)
    got = []
    model.output_projection.register_forward_hook(lambda m, i, o: got.append(o))
    batches = run.prompts.batches
    plain_pass(model, [(b.input_ids, b.attention_mask, b.position_ids, b.last_index) for b in batches],
               run.prompts.answer_ids)
    for b, out in zip(batches, got):
        torch.testing.assert_close(out[:, run.prompts.answer_ids].float(), answer_logits(model, b, run.prompts.answer_ids))


@pytest.mark.e2e
def test_runtime_profile_splits_both_passes_by_operator(base_args, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "profile.json"
    run_benchmark("-m", "benchmarks.runtime_profile", *base_args, "--limit", "4", "--backend", "onnxruntime",
                  "--runtime-cache-dir", tmp_path / "cache", "--out", out)
    r = json.loads(out.read_text())
    assert r["model"]["weights"] == "random" and r["config"]["options"]["backend"] == "onnxruntime"
    for name, matmul in (("onnxruntime", "MatMul"), ("eager", "aten::addmm")):
        p = r[name]
        assert 0 < p["matmul_ms"] < p["total_ms"] and p["top"][matmul] > 0
        assert sum(p["top"].values()) + p["rest_ms"] == pytest.approx(p["total_ms"])
