"""What a user sees around a run: Ctrl-C, --overwrite, a --limit beyond the test set, accuracy-only timing
(--min-passes 0) and the timed phase's progress estimate."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import make_synthetic_pubmedqa, run_script
from evaluation import UsageError, parse_config, run_main
from evaluation.harness import passes_needed

ROOT = Path(__file__).resolve().parents[1]
BASELINE = "baseline.baseline"


def results_of(base_args, name: str) -> dict:
    out = Path(base_args[base_args.index("--output-dir") + 1])
    return json.loads((out / name / "results.json").read_text())


def test_ctrl_c_is_one_line_and_exit_130(capsys):
    def main():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as e:
        run_main(main)
    assert e.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted"


@pytest.mark.e2e
def test_ctrl_c_during_the_run_writes_nothing(base_args, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("evaluation.runner.evaluate", interrupted)
    assert run_script(BASELINE, [*base_args, "--run-name", "cut"]) == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "interrupted; nothing written" and "Traceback" not in err
    assert not Path(base_args[base_args.index("--output-dir") + 1]).exists()


@pytest.mark.e2e
def test_ctrl_c_while_logging_keeps_the_results(base_args, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("evaluation.runner.Tracker.summary", interrupted)
    assert run_script(BASELINE, [*base_args, "--run-name", "kept"]) == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("interrupted; results kept in ") and last.endswith("kept; the wandb run is incomplete")
    assert results_of(base_args, "kept")["metrics"]["n"] == 6


@pytest.mark.e2e
def test_sigint_in_the_timed_phase(tokenizer_dir, data_dir, tmp_path):
    """A real Ctrl-C (SIGINT) half-way through the timed phase: one line, exit 130, no traceback, nothing left."""
    out, log = tmp_path / "out", tmp_path / "stderr"
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "baseline/baseline.py", "--model", "tiny-random", "--tokenizer-dir",
                                 tokenizer_dir, "--data-dir", data_dir, "--limit", "4", "--wandb", "disabled",
                                 "--output-dir", str(out), "--min-duration", "600"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"},
                                # as from a terminal: a shell's background job (`cmd &`) starts its children with
                                # SIGINT ignored, and Python then never raises KeyboardInterrupt
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.monotonic() + 300
        while "timed passes" not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130, log.read_text()[-2000:]
    text = log.read_text()
    assert text.strip().splitlines()[-1] == "interrupted; nothing written" and "Traceback" not in text
    assert not out.exists()


@pytest.mark.e2e
def test_overwrite_replaces_the_run(base_args):
    assert run_script(BASELINE, [*base_args, "--run-name", "same", "--batch-size", "4"]) == 0
    out = Path(base_args[base_args.index("--output-dir") + 1])
    (out / "same" / "stale.txt").write_text("from the first run")
    assert run_script(BASELINE, [*base_args, "--run-name", "same", "--batch-size", "2"]) == 2  # refused
    assert results_of(base_args, "same")["config"]["batch_size"] == 4
    assert run_script(BASELINE, [*base_args, "--run-name", "same", "--batch-size", "2", "--overwrite"]) == 0
    assert results_of(base_args, "same")["config"]["batch_size"] == 2
    assert not (out / "same" / "stale.txt").exists(), "--overwrite kept a file of the run it replaced"
    assert sorted(p.name for p in out.iterdir()) == ["same"]


@pytest.mark.e2e
def test_limit_above_the_test_set_is_clamped_and_recorded(base_args, tmp_path, capsys):
    (tmp_path / "small").mkdir()
    data = make_synthetic_pubmedqa(tmp_path / "small", n=8)  # 4 test questions
    args = [*base_args, "--data-dir", str(data), "--limit", "50", "--run-name", "all"]
    assert run_script(BASELINE, args) == 0
    assert "--limit 50 is more than the 4 test questions: evaluating all 4" in capsys.readouterr().out
    results = results_of(base_args, "all")
    assert results["run"]["questions"] == 4 and results["metrics"]["n"] == 4
    assert results["config"]["limit"] == 50  # the config stays as asked


@pytest.mark.e2e
def test_min_passes_0_times_the_cold_pass_and_says_so(base_args, capsys):
    assert run_script(BASELINE, [*base_args, "--min-passes", "0", "--run-name", "cold"]) == 0
    out = capsys.readouterr()
    m = results_of(base_args, "cold")["metrics"]
    assert m["timing_source"] == "cold_pass" and m["timed_passes"] == 0 and m["pass_wall_s_samples"] == []
    assert m["pass_wall_s_median"] is None and m["timed_pass_agreement"] is None
    assert m["throughput_qps"] > 0 and m["latency_question_ms"]["p50"] > 0
    assert m["throughput_qps"] == pytest.approx(6 / m["cold_pass_s"])
    assert m["stats"]["pass_s_median"]["value"] is None  # no interval from no passes
    assert m["telemetry"]["rss_peak_mib"] > 0  # the sampler watched the cold pass
    assert "timed passes" not in out.err
    assert "no timed phase, --min-passes 0: from the cold pass" in out.out


@pytest.mark.e2e
def test_min_passes_0_against_a_timed_reference(base_args, capsys):
    assert run_script(BASELINE, [*base_args, "--run-name", "ref"]) == 0
    out = Path(base_args[base_args.index("--output-dir") + 1])
    assert run_script(BASELINE, [*base_args, "--min-passes", "0", "--run-name", "cold",
                                 "--reference", str(out / "ref")]) == 0
    c = results_of(base_args, "cold")["metrics"]["comparison"]
    assert c["speedup"]["value"] is None and not c["significant_speedup"]  # a cold pass is no timed pass
    assert "vs reference ref: agreement 100.0%" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--min-passes", "-1"], "--min-passes must be >= 0"),
    (["--min-passes", "0", "--min-duration", "5"], "contradicts --min-duration"),
])
def test_min_passes_refused(argv, message):
    with pytest.raises(UsageError, match=message):
        parse_config("baseline", argv=argv)


def test_a_run_without_min_passes_times_exactly_three_passes(tokenizer_dir, data_dir):
    """Neither --min-passes nor --min-duration, on a CPU: the cold pass, then three timed passes, each a forward of
    every batch (counted on the model), with three pass times recorded."""
    import torch

    from evaluation import evaluate
    from evaluation.modeling import random_model
    from evaluation.resolve import resolve

    cfg = parse_config("baseline", argv=["--model", "tiny-random", "--tokenizer-dir", tokenizer_dir, "--data-dir",
                                         data_dir, "--limit", "3", "--batch-size", "2", "--wandb", "disabled"])
    run = resolve(cfg, torch.device("cpu"), Path("unused"))
    model = random_model("tiny-random", 0, torch.float32, torch.device("cpu"))
    forwards = []
    model.biogpt.register_forward_hook(lambda *_: forwards.append(1))
    metrics, _, _ = evaluate(model, cfg, run)
    assert metrics["timed_passes"] == 3 and len(metrics["pass_wall_s_samples"]) == 3
    assert len(run.prompts.batches) >= 1 and len(forwards) == (1 + 3) * len(run.prompts.batches)


@pytest.mark.parametrize("min_passes, min_duration, done, elapsed, last, expected", [
    (3, 0.0, 0, 0.0, 5.0, 3),     # no duration asked: exactly --min-passes
    (3, 0.0, 2, 10.0, 5.0, 3),
    (1, 10.0, 0, 0.0, 2.0, 5),    # 10 s at 2 s a pass
    (1, 10.0, 2, 4.0, 3.0, 4),    # re-estimated: 6 s left at 3 s a pass
    (1, 10.0, 6, 11.0, 2.0, 6),   # both met: what was run
    (8, 10.0, 1, 1.0, 1.0, 10),
])
def test_passes_needed(min_passes, min_duration, done, elapsed, last, expected):
    assert passes_needed(min_passes, min_duration, done, elapsed, last) == expected
