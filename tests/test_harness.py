import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

from evaluation import RunConfig, evaluate, load_model, load_test_questions, load_tokenizer
from evaluation.resolve import resolve

ROOT = Path(__file__).resolve().parents[1]


def wandb_log(root: Path, *needles: bytes, timeout_s: float = 60) -> bytes:
    """The offline run's .wandb log once it holds every needle: wandb's service may still be flushing it
    for a moment after run.finish() returns on a busy machine."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        log = next(root.glob("offline-run-*/*.wandb")).read_bytes()
        if all(n in log for n in needles) or time.monotonic() > deadline:
            return log
        time.sleep(0.5)


def wandb_records(log: bytes) -> dict:
    """The records of an offline run's .wandb log (wandb's leveldb-style log of protobuf Records), gathered:
    {"summary": the union of summary keys, "history": the union of history keys, "config": {key: JSON}}."""
    import struct

    from wandb.proto import wandb_internal_pb2

    out, pos, chunk = {"summary": set(), "history": set(), "config": {}}, 7, b""  # after the 7-byte file header
    while pos + 7 <= len(log):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a record header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", log[pos:pos + 7])
        chunk = log[pos + 7:pos + 7 + length] if kind in (1, 2) else chunk + log[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind not in (1, 4):  # 1 full, 2 first, 3 middle, 4 last fragment
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunk)
        key = lambda item: item.key or "/".join(item.nested_key)  # noqa: E731
        out["summary"] |= {key(i) for i in record.summary.update}
        out["history"] |= {key(i) for i in record.history.item}
        for config in (record.run.config, record.config):  # the config at init, then any later updates
            out["config"] |= {key(i): json.loads(i.value_json) for i in config.update}
    return out


def run_baseline(args, env=None, **kwargs):
    return subprocess.run([sys.executable, "baseline/baseline.py", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def tiny(tokenizer_dir):
    cfg = RunConfig(model="tiny-random", tokenizer_dir=tokenizer_dir, device="cpu")
    return load_model(cfg, torch.device("cpu")), load_tokenizer(cfg.model, tokenizer_dir)


def evaluated(model, **config):
    """evaluate() on a tiny-random model, the run resolved from `config` as the runner resolves it. The rows'
    predictions, logits and texts come from the cold pass: no timed passes (--min-passes 0)."""
    cfg = RunConfig(model="tiny-random", wandb="disabled", min_passes=0, **config)
    return evaluate(model, cfg, resolve(cfg, torch.device("cpu"), Path("unused")))


@pytest.mark.parametrize("decode", ["score", "generate"])
def test_batched_equals_unbatched(tiny, tokenizer_dir, data_dir, decode):
    model, tok = tiny
    out = {}
    for bs in (1, 4):
        _, rows, _ = evaluated(model, tokenizer_dir=tokenizer_dir, data_dir=data_dir, limit=7, batch_size=bs,
                               decode=decode, max_new_tokens=4)
        out[bs] = rows
    assert [r["prediction"] for r in out[1]] == [r["prediction"] for r in out[4]]
    if decode == "score":
        one = torch.tensor([[r[f"logit_{x}"] for x in ("yes", "no", "maybe")] for r in out[1]])
        four = torch.tensor([[r[f"logit_{x}"] for x in ("yes", "no", "maybe")] for r in out[4]])
        torch.testing.assert_close(four, one, atol=1e-4, rtol=1e-4)
    else:
        assert [r["generated"] for r in out[1]] == [r["generated"] for r in out[4]]


def test_padding_does_not_change_logits_against_a_plain_forward(tiny, tokenizer_dir, data_dir):
    """The batched last-position logits equal a plain single-sequence HF forward's last logits."""
    from evaluation.answering import ANSWER_PREFIX, answer_token_ids, encode_prompt, prompt_ids

    model, tok = tiny
    questions = load_test_questions(data_dir, 3)
    _, rows, _ = evaluated(model, tokenizer_dir=tokenizer_dir, data_dir=data_dir, limit=3, batch_size=3)
    for q, row in zip(questions, rows):
        ids, _ = encode_prompt(tok, q, ANSWER_PREFIX, 2048, prompt_ids(tok, model.config))  # the run's learned prompt
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0, -1, answer_token_ids(tok)]
        torch.testing.assert_close(torch.tensor([row["logit_yes"], row["logit_no"], row["logit_maybe"]]), ref,
                                   atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def baseline_run(tokenizer_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    r = run_baseline(["--model", "tiny-random", "--tokenizer-dir", tokenizer_dir, "--data-dir", data_dir,
                      "--limit", "12", "--batch-size", "5", "--output-dir", str(out), "--run-name", "base",
                      "--wandb", "offline"])  # wandb as a user gets it: no WANDB_SILENT
    assert r.returncode == 0, r.stderr[-2000:]
    return out / "base", r


@pytest.mark.e2e
def test_terminal_shows_only_what_the_user_can_act_on(baseline_run):
    """No torchao extension failures, no torch pytree deprecations, no wandb banner or sparklines; our own
    wandb line (where the run is, how to sync it), the timed-phase bar with its length and the summary stay."""
    _, r = baseline_run
    for noise in ("Failed to load", "register_constant", "_pytree", "Tracking run with wandb", "Run history",
                  "Run summary", "wandb: Find logs at", "wandb leet"):
        assert noise not in r.stderr + r.stdout, noise
    assert "wandb sync" in r.stdout
    assert "timed passes: 100%" in r.stderr and "3/3" in r.stderr  # a known total, so tqdm shows an ETA
    assert "median of 3 timed passes" in r.stdout and "spread" in r.stdout


@pytest.mark.e2e
def test_results_files_written(baseline_run, data_dir):
    run_dir, _ = baseline_run
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results) == {"config", "run", "environment", "model", "metrics", "technique"}
    cfg, metrics = results["config"], results["metrics"]
    assert cfg["technique"] == "baseline" and cfg["variant"] == "fp32-eager" and cfg["options"] == {}
    assert results["run"] == {"run_name": "base", "device": "cpu", "weights": "random", "questions": 12,
                              "prompt_form": "learned-prompt-9", "prompt_ids": list(range(57717, 57726)),
                              "min_duration_s": 0.0}
    assert results["model"]["identity"] == {
        "name": "tiny-random", "weights": "random", "seed": 0,
        "architecture": {"vocab_size": 57726, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                         "intermediate_size": 256, "max_position_embeddings": 2048}}
    assert metrics["n"] == 12 and metrics["timed_passes"] == 3 and metrics["timing_source"] == "timed_passes"
    assert len(metrics["pass_wall_s_samples"]) == 3 and metrics["pass_ms"]["n"] == 3
    assert (run_dir.stat().st_mode & 0o777) == 0o755, "a run directory is for others to read"
    for key in ("p50", "p90", "p99", "mean", "stdev"):
        assert metrics["latency_question_ms"][key] > 0
    assert metrics["throughput_qps"] > 0 and metrics["cold_pass_s"] > 0 and metrics["load_s"] > 0
    assert metrics["telemetry"]["nvml_error"] and metrics["telemetry"]["rss_peak_mib"] > 0
    assert metrics["peak_memory"] == {"mib": metrics["telemetry"]["rss_peak_mib"], "source": "process peak RSS"}
    assert results["environment"]["torch"] == torch.__version__
    assert results["model"]["footprint_bytes"] == 4 * results["model"]["parameters"]
    predictions = json.loads((run_dir / "predictions.json").read_text())
    assert list(predictions) == [q.pmid for q in load_test_questions(data_dir, 12)]
    assert set(predictions.values()) <= {"yes", "no", "maybe"}
    csv_lines = (run_dir / "per_question.csv").read_text().splitlines()
    assert csv_lines[0].startswith("pmid,gold,prediction,logit_yes,logit_no,logit_maybe,latency_ms,tokens")
    assert len(csv_lines) == 13
    assert not [p for p in run_dir.parent.iterdir() if p.name.startswith(".base")], "temporary dir left behind"


@pytest.mark.e2e
def test_official_evaluation_agrees_with_results(baseline_run, data_dir):
    """PubMedQA's evaluation.py: sklearn accuracy and macro-F1 of predictions.json against the ground truth."""
    run_dir, _ = baseline_run
    truth = json.loads((Path(data_dir) / "test_ground_truth.json").read_text())
    predictions = json.loads((run_dir / "predictions.json").read_text())
    pmids = list(predictions)
    gold, pred = [truth[p] for p in pmids], [predictions[p] for p in pmids]
    metrics = json.loads((run_dir / "results.json").read_text())["metrics"]
    assert metrics["accuracy"] == accuracy_score(gold, pred)
    assert metrics["macro_f1"] == f1_score(gold, pred, average="macro")


@pytest.mark.e2e
def test_offline_wandb_run_written_and_read_back(baseline_run):
    run_dir, r = baseline_run
    offline = list((run_dir.parent / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, "expected exactly one offline wandb run"
    assert "wandb sync" in r.stdout
    # the per-question table, read back, holds the same predictions as the local CSV
    table = json.loads(next((offline[0] / "files" / "media" / "table").glob("predictions_*.table.json")).read_text())
    col = table["columns"].index("prediction")
    predictions = json.loads((run_dir / "predictions.json").read_text())
    assert [row[col] for row in table["data"]] == list(predictions.values())
    # the run log holds the tags, config and summary keys
    needles = (b"weights: random", b"macro_f1", b"latency_question_ms", b"biogpt-pubmedqa", b"confusion_matrix_table")
    log = wandb_log(run_dir.parent / "wandb", *needles)
    for needle in needles:
        assert needle in log, needle
    records = wandb_records(log)
    summary, config = records["summary"], records["config"]
    # the summary holds the run's metrics, the same names as results.json, and nothing from the last history row
    assert {"accuracy", "macro_f1", "throughput_qps", "latency_question_ms", "pass_ms", "telemetry"} <= summary
    leaked = {k for k in summary if k.split("/")[0] in ("batch", "pass", "latency_ms", "batch_size", "seq_len",
                                                        "real_tokens")}
    assert not leaked, leaked
    # per-batch and per-pass history, each on its own axis
    assert {"batch/index", "batch/latency_ms", "batch/seq_len", "pass/index", "pass/wall_s"} <= records["history"]
    # options and the device actually used are config, not summary
    assert config["resolved"]["device"] == "cpu" and config["resolved"]["questions"] == 12
    assert config["environment"]["torch"] == torch.__version__ and config["options"] == {}
    assert not {"environment", "options", "resolved"} & summary


@pytest.mark.e2e
def test_reference_gives_full_agreement_with_itself(baseline_run, tokenizer_dir, data_dir):
    run_dir, _ = baseline_run
    r = run_baseline(["--model", "tiny-random", "--tokenizer-dir", tokenizer_dir, "--data-dir", data_dir,
                      "--limit", "12", "--batch-size", "3", "--output-dir", str(run_dir.parent), "--run-name", "again",
                      "--wandb", "disabled", "--reference", str(run_dir)])
    assert r.returncode == 0, r.stderr[-2000:]
    fid = json.loads((run_dir.parent / "again" / "results.json").read_text())["metrics"]["fidelity"]
    assert fid["n_compared"] == 12 and fid["agreement"] == 100.0 and fid["mean_kl"] < 1e-8


@pytest.mark.parametrize("extra, message", [
    (["--limit", "0"], "--limit"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--device", "cuda"], "CUDA"),
    (["--model", "tiny-randm"], "unknown preset"),
    (["--model", "./no/such/dir"], "model directory not found"),
    (["--model", "microsoft/BioGPT-Large-PubMedQA"], "not found locally or reachable on the hub"),
    (["--data-dir", "/no/such/pubmedqa"], "data directory not found"),
    (["--reference", "/no/such/run"], "--reference"),
    (["--output-dir", "/proc/forbidden"], "output directory not writable"),
])
@pytest.mark.e2e
def test_bad_input_one_line_exit_2_nothing_written(tokenizer_dir, data_dir, tmp_path, extra, message):
    if "--device" in extra and torch.cuda.is_available():
        pytest.skip("CUDA is present")
    args = ["--model", "tiny-random", "--tokenizer-dir", tokenizer_dir, "--data-dir", data_dir, "--limit", "2",
            "--wandb", "disabled", "--output-dir", str(tmp_path / "out" / "nested")]
    # later flags win in argparse
    r = run_baseline(args + extra)
    assert r.returncode == 2, (r.returncode, r.stderr[-1500:])
    last = r.stderr.strip().splitlines()[-1]
    assert message in last, last
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists(), "a failed run left (empty) directories behind"


def test_saved_random_preset_reloads_marked_random(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    from evaluation.modeling import load_config
    from evaluation.resolve import model_identity

    cfg = RunConfig(model=str(tmp_path), device="cpu")
    assert model_identity(cfg, load_config(cfg))["weights"] == "random"


def test_training_curve_logged_as_wandb_history(tmp_path):
    from evaluation.tracking import Tracker

    cfg = RunConfig(model="tiny-random", wandb="offline", run_name="curve", output_dir=str(tmp_path))
    tracker = Tracker(cfg, {"config": cfg.to_dict(), "run": {"run_name": "curve", "weights": "random"}},
                      tmp_path / "curve")
    tracker.curve("finetune", [{"step": i, "train_loss": 3.0 - i, "learning_rate": 1e-5} for i in range(3)])
    tracker.finish()
    log = wandb_log(tmp_path / "wandb", b"finetune/train_loss", b"finetune/step")
    assert b"finetune/train_loss" in log and b"finetune/step" in log


@pytest.mark.e2e
def test_intervals_and_paired_test_recorded(baseline_run, tokenizer_dir, data_dir):
    """metrics.stats holds bootstrap intervals around the scores; a --reference run holds the paired test."""
    run_dir, _ = baseline_run
    m = json.loads((run_dir / "results.json").read_text())["metrics"]
    acc = m["stats"]["accuracy"]
    assert acc["ci_low"] <= m["accuracy"] <= acc["ci_high"] and acc["confidence"] == 0.95
    r = run_baseline(["--model", "tiny-random", "--tokenizer-dir", tokenizer_dir, "--data-dir", data_dir,
                      "--limit", "12", "--batch-size", "4", "--output-dir", str(run_dir.parent), "--run-name", "paired",
                      "--wandb", "disabled", "--reference", str(run_dir), "--min-passes", "3"])
    assert r.returncode == 0, r.stderr[-2000:]
    c = json.loads((run_dir.parent / "paired" / "results.json").read_text())["metrics"]["comparison"]
    assert c["paired"]["basis"] == "agreement_with_reference"  # random weights: correctness means nothing
    assert c["paired"]["right_to_wrong"] == 0 and c["paired"]["mcnemar_p"] == 1.0 and not c["distinguishable"]
    assert "vs reference base: agreement 100.0%" in r.stdout and "McNemar p 1" in r.stdout


@pytest.mark.parametrize("extra, message", [
    (["--run-name", "base"], "already exists"),
    (["--limit", "5"], "answered 12 questions, this run 5"),
])
@pytest.mark.e2e
def test_existing_run_and_other_question_set_refused(baseline_run, tokenizer_dir, data_dir, extra, message):
    run_dir, _ = baseline_run
    before = sorted(p.name for p in run_dir.parent.iterdir())
    r = run_baseline(["--model", "tiny-random", "--tokenizer-dir", tokenizer_dir, "--data-dir", data_dir,
                      "--limit", "12", "--output-dir", str(run_dir.parent), "--run-name", "other", "--wandb", "disabled",
                      "--reference", str(run_dir), *extra])
    assert r.returncode == 2 and message in r.stderr.strip().splitlines()[-1]
    assert sorted(p.name for p in run_dir.parent.iterdir()) == before  # nothing written, nothing replaced


@pytest.mark.parametrize("limit", [6, 20, 100, 500])
def test_token_budget_batches_pad_under_ten_percent(tokenizer_dir, data_dir, limit):
    """Eager batches by token budget: padding stays under 10% of the computed tokens at any --limit (plain
    batches of 16 longest-first padded 28% on the first 20 test questions), and every question is in one batch."""
    from evaluation.answering import ANSWER_PREFIX, MAX_PADDING, encode_prompt, make_batches
    from evaluation.modeling import load_tokenizer

    tok = load_tokenizer("tiny-random", tokenizer_dir)
    ids = [encode_prompt(tok, q, ANSWER_PREFIX, 2048)[0] for q in load_test_questions(data_dir, limit)]
    batches = make_batches(ids, 16, tok.pad_token_id, left_pad=False, device=torch.device("cpu"))
    real, padded = sum(b.real_tokens for b in batches), sum(b.padded_tokens for b in batches)
    assert 1 - real / padded < MAX_PADDING == 0.10
    assert sorted(i for b in batches for i in b.indices) == list(range(len(ids)))
    assert max(b.padded_tokens for b in batches) <= 16 * real / len(ids) + max(map(len, ids))  # the token budget
