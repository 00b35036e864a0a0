"""evaluation.report on hand-made results (missing fields, random weights, two devices, two question sets, failed
and skipped runs), on a real baseline run, and the matrix's control flow (evaluation.matrix) with stub scripts."""
import copy
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation import report, stats
from evaluation.config import UsageError, run_main
from evaluation.report import plots as report_plots

ROOT = Path(__file__).resolve().parents[1]
PMIDS_20 = [str(10_000_000 + 7 * i) for i in range(20)]

TEMPLATE = {
    "config": {"technique": "baseline", "variant": "fp32-eager", "model": "tiny-random", "limit": 20,
               "batch_size": 16, "decode": "score", "dtype": "float32", "data_dir": "/data/pubmedqa",
               "run_name": None, "reference": None, "options": {}},
    "run": {"run_name": None, "device": "cpu", "weights": "random", "prompt_form": "plain"},
    "environment": {"device_type": "cpu", "device_name": "Test CPU", "date": "2026-11-22T10:00:00+0000"},
    "model": {"parameters": 1000, "footprint_bytes": 4000 * 2**10, "bytes_per_parameter": 4.0, "weights": "random"},
    "metrics": {"n": 20, "accuracy": 0.35, "macro_f1": 0.22,
                "latency_question_ms": {"p50": 20.0, "p99": 30.0}, "throughput_qps": 50.0,
                "torch_peak_allocated_mib": None, "peak_memory": {"mib": 600.0, "source": "process peak RSS"},
                "telemetry": {"nvml_error": "NVML not used: the run is on the CPU", "energy_j_per_question": None,
                              "rss_peak_mib": 600.0}},
}


def make_run(root: Path, name: str, *, technique="baseline", variant="fp32-eager", device="cpu", weights="random",
             qps=50.0, p50=20.0, peak=600.0, energy=None, accuracy=0.35, agreement=None, reference=None,
             pmids=PMIDS_20, drop=(), preds=None, golds=None, pass_s=None, per_question=True, footprint=None,
             metrics=None, **config) -> Path:
    """A results.json in the harness' layout (+ predictions.json, + per_question.csv with logits unless
    per_question=False); `drop`: dotted keys to delete. preds/golds: one label per PMID (default: all "yes"
    against 7 "yes" then "no": accuracy 0.35); pass_s: the timed passes (default three of n/qps seconds);
    metrics: merged into results["metrics"]."""
    preds = preds or ["yes"] * len(pmids)
    golds = golds or ["yes" if i < 7 else "no" for i in range(len(pmids))]
    r = copy.deepcopy(TEMPLATE)
    r["config"].update(technique=technique, variant=variant, run_name=name, **config)
    r["run"].update(run_name=name, weights=weights)
    r["model"]["weights"] = weights
    m = r["metrics"]
    m.update(n=len(pmids), accuracy=accuracy, throughput_qps=qps)
    m["pass_wall_s_samples"] = pass_s if pass_s is not None else [len(pmids) / qps] * 3
    m.update(metrics or {})
    if footprint is not None:
        r["model"]["footprint_bytes"] = footprint
    m["latency_question_ms"].update(p50=p50, p99=1.5 * p50)
    if device == "cuda":
        r["environment"].update(device_type="cuda", device_name="Test GPU")
        m["torch_peak_allocated_mib"] = peak
        m["telemetry"].update(nvml_error=None, energy_j_per_question=energy, rss_peak_mib=2000.0)
    else:
        m["telemetry"]["rss_peak_mib"] = peak
    if "peak_memory" not in (metrics or {}):  # as the runner records it (evaluation.telemetry.peak_memory)
        m["peak_memory"] = {"mib": peak, "source": "torch peak allocated" if device == "cuda" else "process peak RSS"}
    if agreement is not None:
        m["fidelity"] = {"agreement": agreement, "mean_kl": (100 - agreement) / 100, "reference": str(root / reference)}
    for key in drop:
        *path, last = key.split(".")
        d = r
        for k in path:
            d = d[k]
        del d[last]
    run_dir = root / name
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(r))
    (run_dir / "predictions.json").write_text(json.dumps(dict(zip(pmids, preds))))
    if per_question:
        with open(run_dir / "per_question.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["pmid", "gold", "prediction", "logit_yes", "logit_no", "logit_maybe", "latency_ms", "tokens",
                        "truncated_tokens"])
            for pmid, gold, pred in zip(pmids, golds, preds):
                w.writerow([pmid, gold, pred, *(1.0 if x == pred else 0.0 for x in ("yes", "no", "maybe")),
                            p50, 100, 0])
    return run_dir


@pytest.fixture
def results_root(tmp_path):
    root = tmp_path / "results"
    make_run(root, "baseline-cpu", qps=50.0, peak=600.0)
    make_run(root, "precision-bf16-cpu", technique="precision", variant="bfloat16", dtype="bfloat16", qps=100.0,
             p50=10.0, peak=300.0, agreement=90.0, reference="baseline-cpu")
    # no telemetry at all, no latency: must still be listed
    make_run(root, "pruning-old", technique="pruning", variant="unstructured-0.5", qps=40.0,
             drop=("metrics.telemetry", "metrics.latency_question_ms", "metrics.peak_memory", "model.footprint_bytes"),
             agreement=70.0, reference="baseline-cpu")
    make_run(root, "baseline-gpu", device="cuda", qps=400.0, p50=2.5, peak=4000.0, energy=0.20)
    make_run(root, "precision-bf16-gpu", technique="precision", variant="bfloat16", device="cuda", qps=1200.0,
             p50=0.8, peak=2000.0, energy=0.05, agreement=95.0, reference="baseline-gpu")
    # same device and model, another question set (10 PMIDs), no baseline of its own
    make_run(root, "tensor-inductor-10q", technique="tensor_rewriting", variant="inductor-default", qps=90.0,
             pmids=PMIDS_20[:10], limit=10)
    # real weights: accuracy is a model accuracy
    make_run(root, "baseline-real", weights="real", model="microsoft/BioGPT-Large-PubMedQA", accuracy=0.78)
    fail = root / "quantization-dynamic-int8"
    fail.mkdir()
    (fail / "error.json").write_text(json.dumps({
        "command": "python quantization/quant_int8_dynamic_eval.py --scheme dynamic-int8", "returncode": 1,
        "stderr_tail": "Traceback (most recent call last):\n  File \"q.py\", line 1\nRuntimeError: no int8 kernel"}))
    skipped = root / "precision-fp8"
    skipped.mkdir()
    (skipped / "error.json").write_text(json.dumps({
        "command": "python precision_reduction/precision_experiments.py --precision fp8", "returncode": None,
        "skipped": True, "reason": "fp8 needs a CUDA GPU with compute capability >= 8.9"}))
    (root / "broken").mkdir()
    (root / "broken" / "results.json").write_text("{not json")
    # wandb's and temporary directories are not runs
    make_run(root / "wandb", "offline-run-x")
    make_run(root, ".precision-int8.tmp123")
    return root


def rows_by_run(rep):
    return {r["run"]: r for r in rep["rows"]}


def cell(md: str, run: str, column: str) -> str:
    """The cell of report.md's quality or speed table in `column` for `run`."""
    table, columns = ((md.split("### Quality")[1].split("### Speed")[0], report.QUALITY_COLUMNS)
                      if column in report.QUALITY_COLUMNS else (md.split("### Speed")[1], report.SPEED_COLUMNS))
    line = next(x for x in table.splitlines() if x.startswith("|") and f"`{run}`" in x)
    return [c.strip() for c in line.strip().strip("|").split(" | ")][columns.index(column)]


def test_report_groups_ratios_and_failures(results_root, tmp_path):
    out = tmp_path / "out"
    rep = report.build_report([results_root], out)
    rows = rows_by_run(rep)
    assert set(rows) == {"baseline-cpu", "precision-bf16-cpu", "pruning-old", "baseline-gpu", "precision-bf16-gpu",
                         "tensor-inductor-10q", "baseline-real"}
    # two devices, two question sets, real vs random model: never one group
    groups = {r["group"] for r in rows.values()}
    assert len(groups) == 4
    assert rows["baseline-cpu"]["group"] == rows["precision-bf16-cpu"]["group"] == rows["pruning-old"]["group"]
    assert rows["baseline-gpu"]["group"] == rows["precision-bf16-gpu"]["group"] != rows["baseline-cpu"]["group"]
    assert rows["tensor-inductor-10q"]["group"] != rows["baseline-cpu"]["group"]
    # ratios only against the baseline of the same group
    assert rows["precision-bf16-cpu"]["speedup"] == pytest.approx(2.0)
    assert rows["precision-bf16-cpu"]["mem_ratio"] == pytest.approx(1.0)  # CPU: footprint, not RSS
    assert rows["precision-bf16-gpu"]["speedup"] == pytest.approx(3.0)
    assert rows["precision-bf16-gpu"]["mem_ratio"] == pytest.approx(0.5)
    assert rows["tensor-inductor-10q"]["speedup"] is None
    # peak memory says where it came from; energy only with NVML
    assert rows["precision-bf16-cpu"]["peak_source"] == "process peak RSS"
    assert rows["precision-bf16-gpu"]["peak_source"] == "torch peak allocated"
    assert rows["precision-bf16-gpu"]["energy_j_per_q"] == 0.05
    assert "NVML not used" in rows["precision-bf16-cpu"]["energy_note"]
    # missing fields are missing, not invented
    old = rows["pruning-old"]
    assert old["p50_ms"] is None and old["peak_mib"] is None and old["mem_ratio"] is None
    assert old["speedup"] == pytest.approx(0.8)
    # baseline first within each group
    order = [r["run"] for r in rep["rows"]]
    assert order.index("baseline-cpu") < order.index("precision-bf16-cpu") < order.index("pruning-old")
    assert order.index("baseline-gpu") < order.index("precision-bf16-gpu")
    # failed, skipped and unreadable runs are listed
    failed = {f["run"]: f for f in rep["failed"]}
    assert set(failed) == {"quantization-dynamic-int8", "precision-fp8", "broken"}

    md = (out / "report.md").read_text()
    tables = md.split("## Runs")[1]  # the run table and the failed-run table, not the group legend

    def line(run):  # the run's rows of the quality and the speed table, one after the other
        return " ".join(x for x in tables.splitlines() if f"`{run}`" in x and x.startswith("|"))
    assert "0.350 [0.150, 0.550] (random)" in line("precision-bf16-cpu")
    assert "0.780" in line("baseline-real") and "(random)" not in line("baseline-real")
    assert "2.00×" in line("precision-bf16-cpu") and "3.00×" in line("precision-bf16-gpu")
    assert "(RSS)" in line("precision-bf16-cpu") and "(GPU)" in line("precision-bf16-gpu")
    assert cell(md, "baseline-cpu", "agreement %") == "ref"
    assert "RuntimeError: no int8 kernel" in line("quantization-dynamic-int8")
    assert "skipped" in line("precision-fp8") and "compute capability" in line("precision-fp8")
    assert "unreadable results.json" in line("broken")
    assert "none (no comparisons)" in md
    assert "offline-run-x" not in md and ".precision-int8" not in md
    for name in ("quality_vs_latency", "memory_vs_throughput", "energy_per_question"):
        png = out / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert f"plots/{name}.png" in md
    saved = json.loads((out / "report.json").read_text())
    assert len(saved["runs"]) == 7 and len(saved["failed"]) == 3


def test_cpu_only_runs_still_get_an_energy_plot_saying_why(tmp_path):
    root = tmp_path / "results"
    make_run(root, "baseline")
    make_run(root, "precision-bf16", technique="precision", variant="bfloat16", qps=80.0, agreement=95.0,
             reference="baseline")
    rep = report.build_report([root], root)
    assert (root / "plots" / "energy_per_question.png").is_file()
    assert "J/q (energy per question) is shown only where NVML measured it" in (root / "report.md").read_text()
    assert rep["rows"][0]["run"] == "baseline"


def test_pareto_front():
    #            fast+bad   slow+good  dominated  fastest+worst
    points = [(1.0, 50.0), (5.0, 90.0), (6.0, 80.0), (0.5, 40.0)]
    assert sorted(report_plots.pareto_front(points)) == [0, 1, 3]


def test_no_runs_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(UsageError, match="no results.json or error.json under"):
        report.main([str(tmp_path), "--wandb", "disabled"])
    with pytest.raises(SystemExit) as exit_:  # as `python -m evaluation.report` ends: one line, exit code 2
        run_main(lambda: report.main([str(tmp_path / "missing")]))
    assert exit_.value.code == 2
    assert capsys.readouterr().err == f"error: results directory not found: {tmp_path / 'missing'}\n"


def test_wandb_offline_table(results_root, tmp_path, monkeypatch, capfd):
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    report.main([str(results_root), "--out", str(tmp_path / "out"), "--wandb", "offline"])
    (run,) = (tmp_path / "out" / "wandb").glob("offline-run-*")
    captured = capfd.readouterr()
    # silent like a run's Tracker: no wandb banner, one line saying where the report's run is
    assert [x for x in (captured.out + captured.err).splitlines() if x.startswith("wandb")] == [
        f"wandb: the report was logged offline in {run}; upload it with `wandb sync {run}`"]
    tables = {p.name.split("_0_")[0] for p in run.glob("files/media/table/*.table.json")}
    assert tables == {"report", "failed_runs"}
    table = json.loads(next(run.glob("files/media/table/report_*.table.json")).read_text())
    assert len(table["data"]) == 7 and "speedup" in table["columns"]
    assert {"accuracy_ci_low", "accuracy_ci_high", "macro_f1_ci_low", "mcnemar_p", "right_to_wrong", "wrong_to_right",
            "accuracy_diff_ci_low", "speedup_ci_low", "speedup_ci_high", "significant_speedup",
            "distinguishable"} <= set(table["columns"])
    assert len(list(run.glob("files/media/images/*.png"))) == 3


@pytest.mark.e2e
def test_report_on_a_real_baseline_run(base_args, tmp_path):
    p = subprocess.run([sys.executable, "baseline/baseline.py", *base_args, "--run-name", "baseline"],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-2000:]
    root = tmp_path / "results"
    rep = report.build_report([root], tmp_path / "out")
    (row,) = rep["rows"]
    assert row["technique"] == "baseline" and row["weights"] == "random" and row["n"] == 6
    assert row["p50_ms"] > 0 and row["qps"] > 0 and row["speedup"] == pytest.approx(1.0)
    assert row["peak_source"] == "process peak RSS" and row["peak_mib"] > 0 and row["energy_j_per_q"] is None
    assert "(random)" in (tmp_path / "out" / "report.md").read_text()


STUB = r'''"""Stub script for the matrix test: records its argv, fails for float16, else writes results."""
import json, os, sys
from pathlib import Path
argv = sys.argv[1:]
with open(os.environ["STUB_CALLS"], "a") as f:
    f.write(json.dumps([sys.argv[0], *argv]) + "\n")
if "float16" in argv:
    sys.exit("RuntimeError: stub failure for float16")
opt = lambda k: argv[argv.index(k) + 1]
run_dir = Path(opt("--output-dir")) / opt("--run-name")
run_dir.mkdir(parents=True, exist_ok=True)
r = json.loads(Path(os.environ["STUB_TEMPLATE"]).read_text())
r["config"].update(technique=Path(sys.argv[0]).parent.name, variant=opt("--run-name"))
if "--model" in argv:
    r["config"]["model"] = opt("--model")
(run_dir / "results.json").write_text(json.dumps(r))
'''


def stub_scripts(matrix, tmp_path, monkeypatch):
    """Every variant's script replaced by STUB under a tree the matrix runs from; (calls log, out dir)."""
    tree = tmp_path / "tree"
    for module in {v.module for v in matrix.variants()}:  # run as python -m MODULE from the tree
        script = tree / (module.replace(".", "/") + ".py")
        script.parent.mkdir(parents=True, exist_ok=True)
        (script.parent / "__init__.py").touch()
        script.write_text(STUB)
    template = tmp_path / "template.json"
    template.write_text(json.dumps(TEMPLATE))
    monkeypatch.setattr(matrix, "ROOT", tree)
    monkeypatch.setenv("STUB_CALLS", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("STUB_TEMPLATE", str(template))
    return tmp_path / "calls.jsonl", tmp_path / "out"


def test_matrix_order_reference_failures_and_report(tmp_path, monkeypatch, capsys):
    """The matrix with stub scripts: baseline first, every other variant --paired with its own fp32-eager
    reference, a failure recorded and the matrix continues, known-broken combinations listed with a reason, then
    the report."""
    from evaluation import matrix

    calls, out = stub_scripts(matrix, tmp_path, monkeypatch)
    with pytest.raises(SystemExit) as e:  # one command failed
        matrix.main(["--out", str(out), "--only", "precision-|pruning-2of4|qat-int4$|tensor-(eager|cudagraphs|tvm-ansor)",
                     "--", "--device", "cpu", "--limit", "20", "--wandb", "disabled"])
    assert e.value.code == 1
    stdout = capsys.readouterr().out
    invoked = [json.loads(x) for x in calls.read_text().splitlines()]
    assert invoked[0][0].endswith("baseline/baseline.py")
    assert "--paired" not in invoked[0] and all("--paired" in c and "--reference" not in c for c in invoked[1:])
    assert all("--limit" in c and "--device" in c for c in invoked)
    names = [c[c.index("--run-name") + 1] for c in invoked]
    assert names.index("precision-float16") < names.index("tensor-tvm-ansor")  # the matrix went on
    assert "precision-fp8" not in names and "tensor-cudagraphs-default" not in names
    err = json.loads((out / "precision-float16" / "error.json").read_text())
    assert err["returncode"] == 1 and "stub failure for float16" in err["stderr_tail"]
    assert "--precision float16" in err["command"]
    assert json.loads((out / "precision-fp8" / "error.json").read_text())["skipped"] is True
    assert "precision-fp8 SKIPPED" in stdout and "compute capability" in stdout
    md = (out / "report.md").read_text()
    assert "`precision-float16`" in md and "skipped (broken or hopeless here)" in md
    assert (out / "plots" / "quality_vs_latency.png").is_file()


def test_matrix_pairs_every_variant_unless_there_are_no_timed_passes(tmp_path):
    from evaluation import matrix

    baseline, int8 = (v for v in matrix.variants() if v.name in ("baseline", "quantization-dynamic-int8"))
    assert matrix.comparison_flags(baseline, [], tmp_path) == []
    assert matrix.comparison_flags(int8, ["--limit", "5"], tmp_path) == ["--paired"]
    for accuracy_only in (["--min-passes", "0"], ["--min-passes=0"]):  # nothing to pair: against the baseline run
        assert matrix.comparison_flags(int8, accuracy_only, tmp_path) == ["--reference", str(tmp_path)]


def test_matrix_over_two_models_writes_one_table(tmp_path, monkeypatch, capsys):
    """--models: the variants once per model, each model's runs (and baseline reference) in OUT/MODEL; one
    table.md over both, headed by the command, a section per model, and the skipped variants once with why."""
    from evaluation import matrix

    calls, out = stub_scripts(matrix, tmp_path, monkeypatch)
    from evaluation import roofline  # a CPU without bf16 units: bf16 at 0.8 GFLOP/s
    monkeypatch.setattr(roofline, "matmul_peak_tflops", lambda device, dtype: {"tflops": 0.15 if
                                                                                 dtype.itemsize == 4 else 0.8e-3})
    small, large = "biogpt-base-random", "biogpt-large-random"
    argv = ["--out", str(out), "--suite", "cpu", "--only", "int8$|bfloat16", "--models", small, large,
            "--", "--limit", "20", "--wandb", "disabled"]
    matrix.main(argv)
    invoked = [json.loads(x) for x in calls.read_text().splitlines()]
    assert [(c[c.index("--model") + 1], c[c.index("--run-name") + 1]) for c in invoked] == [
        (small, "baseline"), (small, "quantization-dynamic-int8"), (large, "baseline"), (large, "quantization-dynamic-int8")]
    assert "--paired" in invoked[3]
    table = (out / "table.md").read_text()
    assert table.startswith("Made by `python -m evaluation.matrix --out")
    assert f"**{small}**" in table and f"**{large}**" in table and table.count("| quantization ") == 2
    assert table.count("`precision-bfloat16`: skipped — an estimated") == 2  # one estimate per model
    with pytest.raises(SystemExit):  # --model too would be ambiguous
        from evaluation.config import run_main

        run_main(lambda: matrix.main(["--models", "a", "--", "--model", "b"]))


def test_matrix_refuses_options_it_sets(capsys):
    from evaluation import matrix
    from evaluation.config import run_main

    with pytest.raises(SystemExit) as e:
        run_main(lambda: matrix.main(["--", "--output-dir", "x"]))
    assert e.value.code == 2 and "the matrix sets these itself" in capsys.readouterr().err


# --------------------------------------------------------------------------- issues 14, 15 and 16 in the report

def test_quality_plot_without_reference_and_runs_left_out(tmp_path):
    """No run has --reference fidelity: agreement and KL come from per_question.csv against the group's baseline,
    the quality plot is not empty, and the runs it can't draw are listed with the reason, in report.md too."""
    root = tmp_path / "results"
    make_run(root, "baseline")
    make_run(root, "precision-int4", technique="precision", variant="int4", qps=80.0,
             preds=["no", "maybe"] + ["yes"] * 18)
    make_run(root, "pruning-old", technique="pruning", variant="block-0.5", per_question=False)
    make_run(root, "quant-nolatency", technique="quantization", variant="dynamic-int8",
             drop=("metrics.latency_question_ms",))
    rep = report.build_report([root], root)
    rows = rows_by_run(rep)
    assert rows["precision-int4"]["agreement"] == pytest.approx(90.0)
    assert rows["precision-int4"]["mean_kl"] > 0 and rows["precision-int4"]["reference"] == "baseline"
    quality = rep["plot_info"]["quality_vs_latency"]
    (group,) = quality["groups"].values()
    assert set(group["points"]) == {"baseline", "precision-int4"}
    assert group["ylabel"] == "agreement with the group baseline (%)"
    left = {x["run"]: x["reason"] for x in quality["left_out"]}
    assert set(left) == {"pruning-old", "quant-nolatency"}
    assert "no per_question.csv" in left["pruning-old"] and "no latency" in left["quant-nolatency"]
    md = (root / "report.md").read_text()
    assert cell(md, "precision-int4", "vs run") == "`baseline` (csv)"
    assert cell(md, "precision-int4", "agreement %") == "90.0"
    section = md.split("Left out of `quality_vs_latency.png`")[1].split("![")[0]
    assert "`pruning-old`: random weights, no --reference fidelity and no per_question.csv" in section
    assert "`quant-nolatency`: no latency recorded" in section


def test_one_point_pareto_front_is_drawn_and_accuracy_axis_is_0_to_1(tmp_path):
    root = tmp_path / "results"
    make_run(root, "baseline-real", weights="real", accuracy=0.78)
    rep = report.build_report([root], root)
    (group,) = rep["plot_info"]["quality_vs_latency"]["groups"].values()
    assert group["front"] == ["baseline-real"] and group["front_vertices"] >= 3  # a visible staircase
    assert group["ylabel"] == "accuracy (0–1)"
    assert "No run left out of `quality_vs_latency.png`" in (root / "report.md").read_text()


def test_memory_plot_uses_footprint_on_cpu_and_nvml_for_tvm_on_gpu(tmp_path):
    root = tmp_path / "results"
    make_run(root, "baseline-cpu", footprint=16 * 2**20, peak=600.0)
    make_run(root, "int4-cpu", technique="quantization", variant="int4", footprint=4 * 2**20, peak=601.0)
    make_run(root, "baseline-gpu", device="cuda", peak=4000.0, metrics={"telemetry": {
        "gpu_mem_used_peak_mib": 4500.0, "energy_j_per_question": 0.2, "nvml_error": None}})
    make_run(root, "tensor-tvm", device="cuda", technique="tensor_rewriting", variant="tvm-default", peak=50.0,
             options={"backend": "tvm", "mode": "default"}, metrics={"telemetry": {
                 "gpu_mem_used_peak_mib": 5400.0, "energy_j_per_question": 0.3, "nvml_error": None},
                 "peak_memory": {"mib": 5400.0, "source": "NVML peak used"}})
    rep = report.build_report([root], root)
    rows = rows_by_run(rep)
    groups = rep["plot_info"]["memory_vs_throughput"]["groups"]
    cpu, gpu = groups[rows["baseline-cpu"]["group"]], groups[rows["baseline-gpu"]["group"]]
    assert cpu["values"] == {"baseline-cpu": 16.0, "int4-cpu": 4.0} and "footprint" in cpu["ylabel"]
    assert rows["int4-cpu"]["mem_ratio"] == pytest.approx(0.25)
    assert gpu["values"] == {"baseline-gpu": 4000.0, "tensor-tvm": 5400.0}
    assert gpu["sources"]["tensor-tvm"] == "NVML peak used" and "NVML" in gpu["ylabel"]
    assert rows["tensor-tvm"]["mem_ratio"] == pytest.approx(5400 / 4500)  # NVML against the baseline's NVML
    md = (root / "report.md").read_text()
    assert cell(md, "tensor-tvm", "peak MiB") == "5,400 (NVML)"
    assert "for runs that allocate outside PyTorch's allocator" in md


def test_repeats_whose_timings_disagree_are_flagged(tmp_path):
    root = tmp_path / "results"
    make_run(root, "baseline", pass_s=[0.40, 0.41, 0.39])
    make_run(root, "int8-a", technique="quantization", variant="dynamic-int8", pass_s=[0.20, 0.21, 0.19])
    make_run(root, "int8-b", technique="quantization", variant="dynamic-int8", pass_s=[0.40, 0.42, 0.38])
    make_run(root, "bf16-a", technique="precision", variant="bfloat16", pass_s=[0.30, 0.31, 0.29])
    make_run(root, "bf16-b", technique="precision", variant="bfloat16", pass_s=[0.31, 0.32, 0.30])
    rep = report.build_report([root], root)
    rows = rows_by_run(rep)
    assert rows["int8-a"]["repeat_flag"] and rows["int8-b"]["repeat_flag"]
    assert not rows["bf16-a"]["repeat_flag"] and not rows["bf16-b"]["repeat_flag"]  # 3 % apart: agree
    md = (root / "report.md").read_text()
    assert cell(md, "int8-a", "speed-up [95% CI]") == cell(md, "int8-b", "speed-up [95% CI]") == "⚠ repeats disagree"
    assert cell(md, "bf16-a", "speed-up [95% CI]").startswith("1.33×")
    assert "2 repeats of quantization/dynamic-int8 disagree in timing" in md
    (group,) = rep["plot_info"]["quality_vs_latency"]["groups"].values()
    assert not {"int8-a", "int8-b"} & set(group["front"])


def test_interval_columns_and_a_hand_computed_mcnemar(tmp_path):
    """Real weights, gold all "yes": the baseline gets q0-q14 right; the variant loses q0-q4 and gains q15.
    b = 5, c = 1: exact McNemar p = 2 * P(X <= 1 | n=6, 1/2) = 2 * 7/64 = 0.21875: not significant."""
    root = tmp_path / "results"
    golds = ["yes"] * 20
    make_run(root, "baseline", weights="real", golds=golds, preds=["yes"] * 15 + ["no"] * 5, accuracy=0.75)
    make_run(root, "pruning-x", weights="real", technique="pruning", variant="x", golds=golds, accuracy=0.55,
             preds=["no"] * 5 + ["yes"] * 10 + ["yes"] + ["no"] * 4)
    rep = report.build_report([root], root)
    row = rows_by_run(rep)["pruning-x"]
    assert (row["right_to_wrong"], row["wrong_to_right"]) == (5, 1)
    assert row["mcnemar_p"] == pytest.approx(14 / 64) and row["paired_basis"] == "correctness"
    assert row["accuracy_diff"] == pytest.approx(-0.2) and row["distinguishable"] is False
    md = (root / "report.md").read_text()
    assert cell(md, "pruning-x", "flips →wrong / →right") == "5 / 1"
    assert cell(md, "pruning-x", "McNemar p") == "0.22"
    assert cell(md, "pruning-x", "quality change sig. 5%") == "no"
    assert re.fullmatch(r"−0\.200 \[−0\.\d{3}, [−0-9.]+\]", cell(md, "pruning-x", "Δ accuracy [95% CI]"))
    assert re.fullmatch(r"0\.550 \[0\.\d{3}, 0\.\d{3}\]", cell(md, "pruning-x", "accuracy [95% CI]"))
    assert re.fullmatch(r"0\.750 \[0\.\d{3}, 0\.\d{3}\]", cell(md, "baseline", "accuracy [95% CI]"))
    assert re.search(r"\[0\.\d{3}, 0\.\d{3}\]", cell(md, "pruning-x", "macro-F1 [95% CI]"))


def test_speedup_interval_ns_and_percent_of_peak(tmp_path):
    root = tmp_path / "results"
    make_run(root, "baseline", pass_s=[1.0, 1.1, 0.9, 1.05, 0.95], metrics={"roofline_fraction": 0.123})
    make_run(root, "fast", technique="precision", variant="bfloat16", pass_s=[0.5, 0.55, 0.45, 0.52, 0.48])
    make_run(root, "same", technique="tensor_rewriting", variant="eager", pass_s=[0.98, 1.02, 1.0, 1.08, 0.92])
    make_run(root, "old", technique="pruning", variant="block-0.5", qps=100.0, drop=("metrics.pass_wall_s_samples",))
    paired = {"speedup": stats.paired_speedup([1.0, 2.0, 1.0], [0.5, 1.0, 0.51]), "significant_speedup": True}
    make_run(root, "int8", technique="quantization", variant="dynamic-int8", pass_s=[0.5, 1.0, 0.51],
             metrics={"comparison": paired})
    make_run(root, "f32", technique="precision", variant="float32", pass_s=[1.0, 2.0, 1.0],
             metrics={"comparison": {"speedup": stats.paired_speedup([1.0, 2.02, 0.99], [1.0, 2.0, 1.0]),
                                     "significant_speedup": False}})
    rep = report.build_report([root], root)
    rows = rows_by_run(rep)
    # timed apart from the baseline run: the bootstrap interval excludes 1, yet it is no finding
    assert rows["fast"]["speedup"] == pytest.approx(2.0) and rows["fast"]["significant_speedup"] is False
    assert rows["fast"]["speedup_ci_low"] > 1.0 and rows["same"]["speedup_ci_low"] < 1.0 < rows["same"]["speedup_ci_high"]
    # stored paired comparisons are used as the runs made them, not recomputed against the baseline run
    assert rows["int8"]["speedup"] == pytest.approx(2.0, rel=0.02) and rows["int8"]["significant_speedup"] is True
    md = (root / "report.md").read_text()
    fast, same = cell(md, "fast", "speed-up [95% CI]"), cell(md, "same", "speed-up [95% CI]")
    assert re.fullmatch(r"2\.00× \[\d\.\d\d, \d\.\d\d\] apart, no test", fast)
    assert same.startswith("1.00×") and same.endswith("apart, no test")
    assert cell(md, "fast", "speed change sig. 5%") == "—" and cell(md, "same", "speed change sig. 5%") == "—"
    assert re.fullmatch(r"[12]\.\d\d× \[\d\.\d\d, \d\.\d\d\] paired", cell(md, "int8", "speed-up [95% CI]"))
    assert cell(md, "int8", "speed change sig. 5%") == "yes (faster)"
    assert cell(md, "f32", "speed-up [95% CI]").endswith(" paired n.s.")
    assert cell(md, "f32", "speed change sig. 5%") == "no"
    assert cell(md, "old", "speed-up [95% CI]") == "2.00× (q/s ratio, no CI)"
    assert cell(md, "baseline", "% of peak") == "12.3" and cell(md, "fast", "% of peak") == "—"
    order = [r["run"] for r in rep["rows"]]
    assert order == ["baseline", "fast", "f32", "old", "int8", "same"]  # by technique and variant, never by speed


def test_percent_of_peak_uses_one_peak_per_dtype_in_a_group(tmp_path):
    """Runs of one table recorded different cached peaks (a later run re-measured a higher one): every run is set
    against the group's highest peak for its dtype, so % of peak ranks like the speed, and table.md names it."""
    root = tmp_path / "results"
    make_run(root, "baseline", metrics={"achieved_tflops": 0.05, "matmul_peak_tflops": 0.1, "roofline_fraction": 0.5})
    make_run(root, "tvm", technique="tensor_rewriting", variant="tvm",
             metrics={"achieved_tflops": 0.06, "matmul_peak_tflops": 0.2, "roofline_fraction": 0.3})
    rows = rows_by_run(report.build_report([root], root))
    assert rows["baseline"]["roofline_pct"] == pytest.approx(25.0) and rows["tvm"]["roofline_pct"] == pytest.approx(30.0)
    assert "tiny-random float32 200 GFLOP/s" in (root / "table.md").read_text()


def help_entries(text: str) -> tuple[str, dict[str, str]]:
    """(description, {invocation: help}) of an argparse --help text, each wrapped paragraph joined into one line."""
    paragraphs = text.split("\n\n")
    description = " ".join(paragraphs[1].split())
    entries, last = {}, None
    for line in "\n".join(p for p in paragraphs[2:] if p.split("\n")[0].endswith(":")).splitlines():
        if line.startswith("  ") and not line.startswith("   "):  # an argument: its invocation, then maybe its help
            last, _, help_ = line.strip().partition("  ")
            entries[last] = help_.strip()
        elif line.startswith("   ") and last:  # the argument's help, wrapped
            entries[last] = f"{entries[last]} {line.strip()}".strip()
    return description, entries


def test_help_says_each_argument_and_its_true_default_in_whole_sentences(monkeypatch, capsys):
    """`python -m evaluation.report --help` as a user reads it (a wide terminal, so no word is wrapped): a one-paragraph
    description and every argument's help are whole sentences, each states its default once, never "None", and the
    defaults it states are the ones the parser uses."""
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit) as exit_:
        report.main(["--help"])
    assert exit_.value.code == 0
    description, entries = help_entries(capsys.readouterr().out)
    assert description.endswith(".") and "evaluation/REPORT.md" in description
    defaults = vars(report.make_parser().parse_args([]))
    entries.pop("-h, --help")
    assert len(entries) == len(defaults), entries  # every argument has its help
    stated = []
    for invocation, help_ in entries.items():
        assert help_.endswith(".") and help_.count("(default: ") == 1, (invocation, help_)
        stated.append(help_.split("(default: ")[1].split(")")[0])
    assert "None" not in stated
    assert {" ".join(v) if isinstance(v, list) else str(v) for v in defaults.values() if v is not None} <= set(stated)
