"""Compare runs: every results.json (and every failed run's error.json) under the given directories becomes one
row of report.md and report.json, a point in three PNG plots and, when wandb is on, a row of a wandb table.

    python -m evaluation.report                                  # results/ -> results/report.md, results/plots/
    python -m evaluation.report results/run_all-X --out reports/X --wandb disabled

Runs are grouped by device, model, decode mode and question set (the PMIDs answered); every comparison (agreement
and KL, the paired McNemar test, the speed-up and its interval, the memory ratio) is taken only against the
baseline run of the same group, from the runs' per_question.csv and timed passes, so runs on different devices or
question sets are never compared. A failed command is recorded as RUN_DIR/error.json
{"command", "returncode", "stderr_tail"} (evaluation.matrix writes it; "skipped": true + "reason" for a
known-broken combination that was not run) and listed under "Failed or skipped runs".
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

from . import stats
from .config import UsageError, run_main
from .metrics import fidelity
from .report_plots import make_plots
from .results import read_per_question
from .tracking import resolve_mode

SKIP_DIRS = {"wandb", "plots", "__pycache__"}


# ---------------------------------------------------------------------------------------------- collecting runs

def dig(d, *keys):
    """d[k1][k2]... or None when any level is missing or not a dict."""
    for k in keys:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def run_dirs(roots: list[Path]):
    """Directories holding results.json or error.json, skipping wandb's and temporary ('.'-prefixed) ones."""
    for root in roots:
        for here, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS)
            if "results.json" in files or "error.json" in files:
                yield Path(here)


def question_set(run_dir: Path, results: dict) -> str:
    """Short id of the PMIDs answered (from predictions.json); falls back to n/limit when that file is absent."""
    try:
        pmids = sorted(json.loads((run_dir / "predictions.json").read_text()))
        return f"{len(pmids)} questions #{hashlib.sha1(','.join(pmids).encode()).hexdigest()[:6]}"
    except (OSError, ValueError, TypeError):
        limit = dig(results, "config", "limit")
        return f"{dig(results, 'metrics', 'n')} questions (limit {limit}, data {dig(results, 'config', 'data_dir')})"


def first(*values):
    """The first value that is not None (for keys another version of the runner names differently)."""
    return next((v for v in values if v is not None), None)


def pass_samples(m: dict) -> list[float] | None:
    """The timed passes' wall times in seconds, under whichever name the run recorded them."""
    samples = first(m.get("pass_wall_s_samples"), m.get("pass_s_samples"), dig(m, "pass_s", "samples_s"))
    if isinstance(samples, list) and samples and all(isinstance(x, (int, float)) for x in samples):
        return [float(x) for x in samples]
    return None


def per_question(run_dir: Path) -> dict | None:
    """PMID -> {"prediction", "gold", "logits"} from per_question.csv; None when absent or unreadable."""
    try:
        pq = read_per_question(run_dir)
    except (OSError, KeyError, ValueError):
        return None
    return pq or None


def roofline_percent(m: dict):
    """metrics.roofline_fraction (achieved TFLOP/s ÷ the measured dense-matmul peak) as a percentage."""
    f = m.get("roofline_fraction")
    f = f.get("value") if isinstance(f, dict) else f
    return 100.0 * f if isinstance(f, (int, float)) else None


def memory_figure(on_gpu: bool, tvm: bool, m: dict, model: dict) -> tuple:
    """(MiB, source) of the figure the memory plot and mem ratio use. GPU: torch's peak allocated, except TVM, which
    allocates outside PyTorch's allocator: NVML's peak device memory in use. CPU: the model footprint (weights as
    stored), because the process RSS is mostly Python and library runtime (~600 MiB for a 15 MiB model)."""
    if on_gpu:
        if tvm:
            return dig(m, "telemetry", "gpu_mem_used_peak_mib"), "NVML used"
        return m.get("torch_peak_allocated_mib"), "GPU allocated"
    fb = model.get("footprint_bytes")
    return (fb / 2**20 if isinstance(fb, (int, float)) else None), "footprint"


def row_from_results(run_dir: Path, results: dict) -> dict:
    cfg, run, env, model, m = (results.get(k) or {} for k in ("config", "run", "environment", "model", "metrics"))
    tele = m.get("telemetry") or {}
    on_gpu = env.get("device_type") == "cuda"
    technique = cfg.get("technique") or "unknown"
    tvm = technique == "tensor_rewriting" and dig(cfg, "options", "backend") == "tvm"
    peak, source = ((m.get("torch_peak_allocated_mib"), "GPU allocated") if on_gpu
                    else (tele.get("rss_peak_mib"), "CPU RSS"))
    if on_gpu and tvm:
        peak, source = tele.get("gpu_mem_used_peak_mib"), "NVML used"
    mem, mem_source = memory_figure(on_gpu, tvm, m, model)
    energy = tele.get("energy_j_per_question")
    energy_note = None if energy is not None else (tele.get("nvml_error") or "no energy figure recorded")
    fid = m.get("fidelity") or {}
    samples = pass_samples(m)
    pq = per_question(run_dir)
    row = {
        "run": run_dir.name, "path": str(run_dir),
        "technique": technique, "variant": cfg.get("variant") or "?", "tvm": tvm,
        "dtype": cfg.get("dtype"), "decode": cfg.get("decode"), "batch_size": cfg.get("batch_size"),
        "model": Path(str(cfg.get("model") or "?").rstrip("/")).name,
        "weights": run.get("weights") or model.get("weights") or "unknown",
        "device_type": env.get("device_type") or "unknown", "device_name": env.get("device_name") or "unknown",
        "date": env.get("date"), "n": m.get("n"), "question_set": question_set(run_dir, results),
        "accuracy": m.get("accuracy"), "macro_f1": m.get("macro_f1"),
        "agreement": fid.get("agreement"), "mean_kl": fid.get("mean_kl"),
        "reference": Path(fid["reference"]).name if fid.get("reference") else None,
        "reference_source": "--reference" if fid.get("agreement") is not None else None,
        "p50_ms": dig(m, "latency_question_ms", "p50"), "p99_ms": dig(m, "latency_question_ms", "p99"),
        "qps": m.get("throughput_qps"), "peak_mib": peak, "peak_source": source,
        "gpu_mem_used_peak_mib": tele.get("gpu_mem_used_peak_mib"),
        "mem_mib": mem, "mem_source": mem_source,
        "energy_j_per_q": energy, "energy_note": energy_note,
        "footprint_bytes": model.get("footprint_bytes"), "setup_s": m.get("setup_s"),
        "padding_fraction": m.get("padding_fraction"), "tokens_per_s": m.get("tokens_per_s"),
        "threads": env.get("torch_threads"), "cpu_isa": env.get("cpu_isa"), "torch": env.get("torch"),
        "roofline_pct": roofline_percent(m), "achieved_tflops": m.get("achieved_tflops"),
        "matmul_peak_tflops": m.get("matmul_peak_tflops"),
        "pass_s_median_value": first(m.get("pass_wall_s_median"),
                                     statistics.median(samples) if samples else None),
        "timed_passes": len(samples) if samples else m.get("timed_passes"),
        "_pass_s": samples, "_pq": pq, "_comparison": m.get("comparison"),
    }
    row.update(own_stats(m, pq, samples))
    return row


def own_stats(m: dict, pq: dict | None, samples: list[float] | None) -> dict:
    """The run's own intervals in stats.flat_summary names (accuracy_ci_low, ..., pass_s_median_ci_low, ...):
    metrics.stats where the run recorded it, else computed here from per_question.csv and the pass times."""
    recorded = m.get("stats") if isinstance(m.get("stats"), dict) else {}
    out = dict(recorded)
    try:
        if "accuracy" not in out and pq and all(v.get("gold") for v in pq.values()):
            pmids = sorted(pq)
            out.update(stats.score_intervals([pq[p]["gold"] for p in pmids], [pq[p]["prediction"] for p in pmids]))
        if "pass_s_median" not in out and samples:
            out["pass_s_median"] = stats.median_ci(samples)
    except ValueError:
        pass
    flat = stats.flat_summary({k: v for k, v in out.items() if k in ("accuracy", "macro_f1", "pass_s_median")})
    flat.pop("pass_s_median", None)  # the point value is pass_s_median_value
    return flat


def collect(roots: list[Path]) -> tuple[list[dict], list[dict]]:
    """(rows of successful runs, failed/skipped entries)."""
    rows, failed = [], []
    for d in run_dirs(roots):
        if (d / "error.json").is_file():
            try:
                err = json.loads((d / "error.json").read_text())
            except ValueError as e:
                err = {"stderr_tail": f"unreadable error.json: {e}"}
            failed.append({"run": d.name, "path": str(d), **err,
                           "note": "an older results.json is also there" if (d / "results.json").is_file() else None})
            continue
        try:
            results = json.loads((d / "results.json").read_text())
            if not isinstance(results, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            failed.append({"run": d.name, "path": str(d), "command": None, "returncode": None,
                           "stderr_tail": f"unreadable results.json: {e}"})
            continue
        rows.append(row_from_results(d, results))
    return rows, failed


# ------------------------------------------------------------------------------------ grouping and ratios

def group_key(r: dict) -> tuple:
    return (r["device_type"], r["device_name"], r["model"], r["decode"] or "?", r["question_set"])


def one_peak_per_dtype(members: list[dict]) -> None:
    """% of peak against one peak per dtype in a group: the highest matmul peak its runs recorded. Each run
    records the cached peak of its day, and a run faster than it (an int8 run beats the fp32 peak) measures it
    again, so the runs of one table can carry different peaks; dividing by each run's own would rank them by
    when they ran."""
    peaks: dict = {}
    for r in members:
        if r["matmul_peak_tflops"]:
            peaks[r["dtype"]] = max(peaks.get(r["dtype"], 0.0), r["matmul_peak_tflops"])
    for r in members:
        if r["achieved_tflops"] is not None and peaks.get(r["dtype"]):
            r["roofline_pct"] = 100.0 * r["achieved_tflops"] / peaks[r["dtype"]]
            r["roofline_peak_tflops"] = peaks[r["dtype"]]


def assign_groups(rows: list[dict]) -> list[dict]:
    """Letter each comparable group, pick its baseline (the latest baseline run), compare every run with it and
    flag repeated runs whose timings disagree. Returns the groups; rows come back sorted: by group, baseline first,
    then technique and variant (never by speed: a sort by a figure would rank runs the statistics can't tell apart)."""
    keys = sorted({group_key(r) for r in rows}, key=lambda k: tuple(str(x) for x in k))
    groups = []
    for i, key in enumerate(keys):
        members = [r for r in rows if group_key(r) == key]
        baselines = sorted((r for r in members if r["technique"] == "baseline"),
                           key=lambda r: (r["date"] or "", r["run"]))
        base = baselines[-1] if baselines else None
        name = chr(ord("A") + i) if i < 26 else f"G{i + 1}"
        for r in members:
            r["group"] = name
            r["is_group_baseline"] = r is base
            compare_with_baseline(r, base)
        unstable = flag_repeats(members)
        one_peak_per_dtype(members)
        weights = sorted({r["weights"] for r in members})
        groups.append({"name": name, "device_type": key[0], "device_name": key[1], "model": key[2],
                       "decode": key[3], "question_set": key[4], "weights": ", ".join(weights),
                       "baseline": base["run"] if base else None, "runs": len(members),
                       "baseline_unstable": bool(base and base.get("repeat_flag")), "unstable_repeats": unstable})
    rows.sort(key=lambda r: (r["group"], not r["is_group_baseline"], r["technique"] != "baseline",
                             r["technique"], r["variant"], r["run"]))
    for g in groups:  # the number a run carries in the plots, also in the table
        for k, r in enumerate((r for r in rows if r["group"] == g["name"]), 1):
            r["plot_id"] = k
    return groups


def ratio(a, b):
    return a / b if a is not None and b else None


COMPARISON_KEYS = ("mcnemar_p", "right_to_wrong", "wrong_to_right", "changed", "changed_ci_low", "changed_ci_high",
                   "paired_basis", "accuracy_diff", "accuracy_diff_ci_low", "accuracy_diff_ci_high", "macro_f1_diff",
                   "macro_f1_diff_ci_low", "macro_f1_diff_ci_high", "distinguishable", "speedup", "speedup_ci_low",
                   "speedup_ci_high", "significant_speedup")


def compare_with_baseline(r: dict, base: dict | None):
    """Everything a run is said to gain or lose, against its group's baseline only (stats.flat_summary names):
    agreement and KL, the paired test and accuracy difference (per_question.csv aligned by PMID; random weights:
    agreement with the baseline as the basis), the speed-up = median baseline pass ÷ median run pass with its
    bootstrap interval, and the memory ratio."""
    r.update(dict.fromkeys(COMPARISON_KEYS), qps_ratio=None, mem_ratio=None, speedup_basis=None,
             comparison_reference=None)
    if base is None:
        return
    r["qps_ratio"] = ratio(r["qps"], base["qps"])
    if r["mem_source"] == "NVML used" and not base["tvm"]:  # NVML's figure includes the CUDA context: like with like
        r["mem_ratio"] = ratio(r["mem_mib"], base["gpu_mem_used_peak_mib"])
    else:
        r["mem_ratio"] = ratio(r["mem_mib"], base["mem_mib"])
    if r is base:
        r.update(speedup=1.0, speedup_basis="baseline")
        return
    ours, theirs = r["_pq"], base["_pq"]
    if r["agreement"] is None and ours and theirs:
        f = fidelity(theirs, ours)
        if f["agreement"] is not None:
            r.update(agreement=f["agreement"], mean_kl=f["mean_kl"], reference=base["run"],
                     reference_source="per_question.csv")
    comparison = None
    try:
        if ours and theirs:
            _, gold, pred, ref_pred = stats.align(ours, theirs)
            if pred:
                comparison = stats.comparison_stats(pred, ref_pred, None if r["weights"] == "random" else gold)
        elif r["_comparison"] and r["reference"] == base["run"]:
            comparison = {k: v for k, v in r["_comparison"].items() if k not in ("speedup", "significant_speedup")}
        if r["_pass_s"] and base["_pass_s"]:
            speed = stats.speedup_ci(r["_pass_s"], base["_pass_s"])
            comparison = (comparison or {}) | {"speedup": speed, "significant_speedup": stats.significant_speedup(speed)}
    except ValueError as e:  # different gold labels for one PMID: the runs read different data
        r["comparison_error"] = str(e)
    if comparison:
        r.update({k: v for k, v in stats.flat_summary(comparison).items() if k in COMPARISON_KEYS})
        r["comparison_reference"] = base["run"]
    if r["speedup"] is not None:
        r["speedup_basis"] = "median pass"
    elif r["qps_ratio"] is not None:  # older runs without pass times: the throughput ratio, no interval
        r.update(speedup=r["qps_ratio"], speedup_basis="q/s")


REPEAT_TOLERANCE = 1.2  # repeats whose median pass times differ by more than this factor disagree


def pass_time(r: dict):
    """A run's typical pass time (s) for comparing repeats: the median timed pass, else derived from throughput."""
    if r["pass_s_median_value"] is not None:
        return r["pass_s_median_value"]
    return r["n"] / r["qps"] if r["qps"] and r["n"] else None


def flag_repeats(members: list[dict]) -> list[str]:
    """Repeated runs of one variant (same technique and variant in one group) whose timings disagree — median-pass
    intervals that don't overlap, or medians more than 20 % apart — get a repeat_flag; their speed-ups are not
    shown side by side as if either were the answer. Returns one line per disagreeing set."""
    lines = []
    by_variant: dict[tuple, list[dict]] = {}
    for r in members:
        r["repeat_flag"] = None
        by_variant.setdefault((r["technique"], r["variant"]), []).append(r)
    for (technique, variant), runs in sorted(by_variant.items()):
        timed = [(r, pass_time(r)) for r in runs if pass_time(r)]
        if len(timed) < 2:
            continue
        reasons = []
        times = [t for _, t in timed]
        if max(times) / min(times) > REPEAT_TOLERANCE:
            reasons.append(f"median passes {min(times):.3g}–{max(times):.3g} s, {max(times) / min(times):.2f}× apart")
        ivs = [(r["pass_s_median_ci_low"], r["pass_s_median_ci_high"]) for r, _ in timed
               if r.get("pass_s_median_ci_low") is not None]
        if len(ivs) >= 2 and max(lo for lo, _ in ivs) > min(hi for _, hi in ivs):
            reasons.append("their 95 % median-pass intervals don't overlap")
        if reasons:
            text = f"{len(timed)} repeats of {technique}/{variant} disagree in timing: " + "; ".join(reasons)
            for r, _ in timed:
                r["repeat_flag"] = text
            lines.append(text + " (" + ", ".join(f"`{r['run']}`" for r, _ in timed) + ")")
    return lines


# ---------------------------------------------------------------------------------------------- Markdown

def fmt(x, digits=None, suffix=""):
    """A cell: '—' for missing; numbers with `digits` decimals (thousands separated) when digits is given."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if digits is not None and isinstance(x, (int, float)):
        return f"{x:,.{digits}f}{suffix}"
    return f"{x}{suffix}"


def fmt_small(x):
    """KL values span many decades (1e-7 for fp16, 0.1 for heavy pruning): three significant digits."""
    return "—" if x is None else f"{x:.3g}"


def fmt_ci(value, low, high, digits=3, suffix=""):
    """'0.350 [0.150, 0.550]'; without bounds just the value."""
    if value is None:
        return "—"
    text = fmt(value, digits, suffix)
    return text + (f" [{low:.{digits}f}, {high:.{digits}f}]" if low is not None and high is not None else "")


def fmt_p(p):
    return "—" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.1 else f"{p:.2f}")


THREE_SENTENCES = (
    "Accuracy and macro-F1 carry a 95 % bootstrap interval over the questions ([low, high]): how far the score could "
    "move on another question set like this one. Every other run is compared with its group's baseline question by "
    "question: flips count the questions it newly gets wrong (→wrong) and newly gets right (→right), the McNemar p "
    "and the paired Δ-accuracy interval say whether that change is real, and with random weights \"right\" means "
    "\"answers as the baseline does\" (marked agr.). The speed-up is the baseline's median timed pass divided by "
    "the run's, with a bootstrap interval over both runs' passes; \"n.s.\" marks an interval that includes 1.0, and "
    "a \"sig. 5 %\" column says no whenever a change is not significant at 5 % — such runs are not faster, slower, "
    "better or worse than the baseline, and they are never ranked against each other.")

QUALITY_COLUMNS = ["group", "#", "technique", "variant", "dtype", "weights", "n", "accuracy [95% CI]",
                   "macro-F1 [95% CI]", "vs run", "agreement %", "mean KL", "flips →wrong / →right", "McNemar p",
                   "Δ accuracy [95% CI]", "quality change sig. 5%", "run"]
SPEED_COLUMNS = ["group", "#", "technique", "variant", "p50 ms/q", "p99 ms/q", "q/s", "median pass s [95% CI]",
                 "speed-up [95% CI]", "speed change sig. 5%", "peak MiB", "footprint MiB", "mem ratio", "% of peak",
                 "J/q", "run"]
COLUMNS = QUALITY_COLUMNS + [c for c in SPEED_COLUMNS if c not in QUALITY_COLUMNS]


def quality_cells(r: dict, referenced: set[tuple]) -> list[str]:
    random = r["weights"] == "random"
    tag = " (random)" if random else ""
    acc = fmt_ci(r["accuracy"], r.get("accuracy_ci_low"), r.get("accuracy_ci_high"))
    f1 = fmt_ci(r["macro_f1"], r.get("macro_f1_ci_low"), r.get("macro_f1_ci_high"))
    agreement = fmt(r["agreement"], 1)
    if r["agreement"] is None and (r["is_group_baseline"] or (r["group"], r["run"]) in referenced):
        agreement = "ref"
    vs = "—"
    if r["reference"]:
        vs = f"`{r['reference']}`" + (" (csv)" if r["reference_source"] == "per_question.csv" else "")
    if r["comparison_reference"] and r["comparison_reference"] != r["reference"]:
        vs += f"; paired: `{r['comparison_reference']}`"
    agr = " (agr.)" if r["paired_basis"] == "agreement_with_reference" else ""
    flips = "—" if r["right_to_wrong"] is None else f"{r['right_to_wrong']} / {r['wrong_to_right']}{agr}"
    diff = fmt_ci(r["accuracy_diff"], r["accuracy_diff_ci_low"], r["accuracy_diff_ci_high"])
    diff = diff.replace("-", "−") + (agr if r["accuracy_diff"] is not None else "")
    if r["distinguishable"] is None:
        sig = "—"
    elif not r["distinguishable"]:
        sig = "no"
    elif agr:
        sig = "yes (differs)"
    else:
        sig = "yes (worse)" if (r["accuracy_diff"] or 0) < 0 else "yes (better)"
    return [r["group"], r["plot_id"], r["technique"], r["variant"], fmt(r["dtype"]), r["weights"], fmt(r["n"]),
            acc + (tag if r["accuracy"] is not None else ""), f1 + (tag if r["macro_f1"] is not None else ""),
            vs, agreement, fmt_small(r["mean_kl"]), flips, fmt_p(r["mcnemar_p"]), diff, sig, f"`{r['run']}`"]


def speedup_cell(r: dict, base_unstable: bool) -> str:
    if r["repeat_flag"] and not r["is_group_baseline"]:
        return "⚠ repeats disagree"
    if r["speedup"] is None:
        return "—"
    if r["speedup_basis"] == "baseline":
        text = "1.00× (base)"
    elif r["speedup_basis"] == "q/s":
        text = fmt(r["speedup"], 2, "×") + " (q/s ratio, no CI)"
    elif r["speedup_ci_low"] is None:
        text = fmt(r["speedup"], 2, "×") + " (no CI: < 3 passes)"
    else:
        text = fmt_ci(r["speedup"], r["speedup_ci_low"], r["speedup_ci_high"], 2, "×")
        if not r["significant_speedup"]:
            text += " n.s."
    return text + (" ⚠ baseline repeats disagree" if base_unstable and not r["is_group_baseline"] else "")


def speed_cells(r: dict, base_unstable: bool) -> list[str]:
    peak = "—"
    if r["peak_mib"] is not None:
        peak = fmt(r["peak_mib"], 0) + {"GPU allocated": " (GPU)", "NVML used": " (NVML)"}.get(r["peak_source"],
                                                                                              " (RSS)")
    if r["pass_s_median_value"] is None:
        median = "—"
    elif r.get("pass_s_median_ci_low") is None:
        median = fmt(r["pass_s_median_value"], 3) + f" ({fmt(r['timed_passes'])} passes, no CI)"
    else:
        median = fmt_ci(r["pass_s_median_value"], r["pass_s_median_ci_low"], r["pass_s_median_ci_high"])
    if r["speedup_basis"] in ("baseline", "q/s") or r["speedup_ci_low"] is None or r["repeat_flag"]:
        sig = "—"
    elif r["significant_speedup"]:
        sig = "yes (faster)" if r["speedup"] > 1 else "yes (slower)"
    else:
        sig = "no"
    return [r["group"], r["plot_id"], r["technique"], r["variant"], fmt(r["p50_ms"], 2), fmt(r["p99_ms"], 2),
            fmt(r["qps"], 1), median, speedup_cell(r, base_unstable), sig, peak,
            fmt(r["footprint_bytes"] / 2**20 if r["footprint_bytes"] is not None else None, 1),
            fmt(r["mem_ratio"], 2, "×"), fmt(r["roofline_pct"], 1), fmt(r["energy_j_per_q"], 3), f"`{r['run']}`"]


def table_cells(r: dict, referenced: set[tuple], base_unstable: bool = False) -> dict:
    """The run's cells of both tables by column name (COLUMNS)."""
    return dict(zip(SPEED_COLUMNS, speed_cells(r, base_unstable))) | dict(zip(QUALITY_COLUMNS,
                                                                              quality_cells(r, referenced)))


def md_table(header: list[str], body: list[list[str]]) -> str:
    clean = lambda c: str(c).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(clean(c) for c in row) + " |" for row in body])


def last_line(text: str | None) -> str:
    lines = [x for x in (text or "").strip().splitlines() if x.strip()]
    return lines[-1][:200] if lines else "—"


def markdown(rows: list[dict], groups: list[dict], failed: list[dict], plots: list[Path], out: Path,
             plot_info: dict | None = None) -> str:
    referenced = {(r["group"], r["reference"]) for r in rows if r["reference"]}  # runs others compared against
    unstable = {g["name"] for g in groups if g["baseline_unstable"]}
    parts = [f"# Run comparison\n\nGenerated {time.strftime('%Y-%m-%d %H:%M %Z')} by `python -m evaluation.report` "
             f"from {len(rows)} run(s) and {len(failed)} failed or skipped run(s).\n"]
    parts.append("## Groups\n\nEvery comparison (agreement, flips, McNemar, Δ accuracy, speed-up, mem ratio) is taken "
                 "only within a group, against the group's baseline run: same device, model, decode mode and "
                 "question set.\n")
    parts.append(md_table(["group", "device", "model", "weights", "decode", "question set", "runs", "baseline run"],
                          [[g["name"], f"{g['device_type']}: {g['device_name']}", g["model"], g["weights"],
                            g["decode"], g["question_set"], g["runs"],
                            (f"`{g['baseline']}`" if g["baseline"] else "none (no comparisons)")
                            + (" ⚠ its repeats disagree in timing" if g["baseline_unstable"] else "")]
                           for g in groups]))
    repeats = [f"group {g['name']}: {line}" for g in groups for line in g["unstable_repeats"]]
    if repeats:
        parts.append("\n**Repeated runs whose timings disagree** (their speed-ups are not shown: rerun on a quieter "
                     "machine or with more timed passes, `--min-passes`):\n\n" + "\n".join(f"- {x}" for x in repeats))
    cells = [table_cells(r, referenced, r["group"] in unstable) for r in rows]
    parts.append("\n## Runs\n\n### Quality\n")
    parts.append(md_table(QUALITY_COLUMNS, [[c[k] for k in QUALITY_COLUMNS] for c in cells]))
    parts.append("\n### Speed and memory\n")
    parts.append(md_table(SPEED_COLUMNS, [[c[k] for k in SPEED_COLUMNS] for c in cells]))
    on_cpu = any(r["device_type"] != "cuda" for r in rows)
    notes = [f"**How to read the statistics.** {THREE_SENTENCES}",
             "accuracy and macro-F1 marked **(random)** come from random weights (`weights: random`): they say "
             "nothing about the model; compare such runs by agreement with their group's baseline instead.",
             "vs run: the run that agreement % and mean KL are measured against; `(csv)`: computed by this report from "
             "both runs' per_question.csv against the group's baseline (the run had no `--reference` fidelity), "
             "else recorded by the run against its own `--reference`; `ref` "
             "marks a run others are compared with. Flips, McNemar p, Δ accuracy and the speed-up are always "
             "against the group's baseline.",
             "flips →wrong / →right: questions the baseline answered right and the run wrong, and the reverse "
             "(`agr.`: with random weights \"right\" = the baseline's answer; then McNemar p is only a conservative "
             "threshold — ≥ 6 changed answers for p < 0.05 — and Δ accuracy = agreement − 1).",
             "latency: per question (a batch's time divided by its questions), p50/p99 over the timed passes; "
             "median pass: the median timed pass with its distribution-free 95 % interval (needs ≥ 6 passes).",
             "speed-up: the baseline's median pass ÷ the run's (> 1: faster) with a 95 % bootstrap interval over "
             "both runs' passes (needs ≥ 3 each); `n.s.`: the interval includes 1.0; `q/s ratio, no CI`: an older "
             "run without pass times. Sorting is by group, technique and variant, never by speed.",
             "peak MiB: (GPU) = torch peak allocated; (NVML) = NVML's peak device memory in use, for TVM runs (TVM "
             "allocates outside PyTorch's allocator, so torch sees almost nothing; NVML includes the CUDA context); "
             "(RSS) = the process' peak resident memory on a CPU, Python and library runtime included.",
             "mem ratio: on a GPU peak ÷ the baseline's peak (NVML against NVML for TVM); on a CPU model footprint ÷ "
             "the baseline's footprint" + (" — the RSS is dominated by the runtime and hides the model's size."
                                           if on_cpu else "."),
             "% of peak: achieved TFLOP/s ÷ the machine's measured dense-matmul peak (`metrics.roofline_fraction`); "
             "— where the run did not record it."]
    no_energy = sorted({f"{r['device_type']}: {r['energy_note']}" for r in rows if r["energy_j_per_q"] is None})
    if no_energy:
        notes.append("J/q (energy per question) is shown only where NVML measured it; missing because: "
                     + "; ".join(no_energy) + ".")
    errors = [f"`{r['run']}`: {r['comparison_error']}" for r in rows if r.get("comparison_error")]
    if errors:
        notes.append("not compared with the baseline question by question: " + "; ".join(errors))
    parts.append("\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    if plots:
        parts.append("## Plots\n")
        for p in plots:
            parts.append(f"![{p.stem}]({p.relative_to(out)})\n")
            info = (plot_info or {}).get(p.stem) or {}
            for note in info.get("notes", []):
                parts.append(f"- {note}")
            left = info.get("left_out") or []
            if left:
                parts.append(f"\nLeft out of `{p.name}`:\n\n" + "\n".join(
                    f"- group {x['group']} #{x['plot_id']} `{x['run']}`: {x['reason']}" for x in left) + "\n")
            else:
                parts.append(f"\nNo run left out of `{p.name}`.\n")
    parts.append("## Failed or skipped runs\n")
    if failed:
        parts.append(md_table(["run", "status", "return code", "reason (last line of stderr)"],
                              [[f"`{f['run']}`", "skipped (broken or hopeless here)" if f.get("skipped") else "failed",
                                fmt(f.get("returncode")), (f.get("reason") or last_line(f.get("stderr_tail")))
                                + (f" ({f['note']})" if f.get("note") else "")] for f in failed]))
        for f in failed:
            tail = "\n".join((f.get("stderr_tail") or "").rstrip().splitlines()[-15:])
            parts.append(f"\n<details><summary>{f['run']}: command{' and stderr tail' if tail else ''}</summary>\n\n"
                         f"```\n{f.get('command') or '(command not recorded)'}\n```\n"
                         + (f"\n```\n{tail}\n```\n" if tail else "") + "</details>")
    else:
        parts.append("None.")
    return "\n".join(parts) + "\n"


def public(r: dict) -> dict:
    """A row without the per-question data and pass times it was computed from."""
    return {k: v for k, v in r.items() if not k.startswith("_")}


# ---------------------------------------------------------------------------------------------- wandb

def log_wandb(mode: str, project: str, rows, failed, plots, out: Path):
    """The same summary as a wandb table (+ plots): the report's row fields, the statistics under
    stats.flat_summary's names (accuracy_ci_low, mcnemar_p, speedup_ci_low, ...). wandb trouble is printed, never
    raised."""
    if mode == "disabled":
        return
    try:
        import wandb

        run = wandb.init(project=project, job_type="report", name=f"report-{time.strftime('%Y%m%d-%H%M%S')}",
                         mode=mode, dir=str(out))
        cols = [k for k in public(rows[0]) if k != "path"] if rows else ["run"]
        data = {"report": wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])}
        fcols = ["run", "skipped", "returncode", "reason", "command", "stderr_tail"]
        data["failed_runs"] = wandb.Table(columns=fcols, data=[[f.get(c) for c in fcols] for f in failed])
        data.update({p.stem: wandb.Image(str(p)) for p in plots})
        run.log(data)
        run.finish()
    except Exception as e:
        print(f"wandb: report not logged ({type(e).__name__}: {e}); it is on disk", file=sys.stderr)


# ---------------------------------------------------------------------------------------------- main

def make_parser() -> argparse.ArgumentParser:
    intro = __doc__.split("\n\n")[0].replace("\n", " ")
    p = argparse.ArgumentParser(prog="python -m evaluation.report",
                                description=intro + " See evaluation/REPORT.md for the columns and plots.")
    p.add_argument("results_dirs", nargs="*", default=["results"], metavar="RESULTS_DIR",
                   help="Directories searched recursively for RUN/results.json and RUN/error.json "
                        "(default: results).")
    p.add_argument("--out", default=None,
                   help="Where report.md, report.json and plots/ are written (default: the first RESULTS_DIR).")
    p.add_argument("--wandb", choices=["auto", "online", "offline", "disabled"], default="auto",
                   help="Log the table and plots to wandb; auto is online when an API key or login exists, else "
                        "offline (default: auto).")
    p.add_argument("--wandb-project", default="biogpt-pubmedqa",
                   help="The wandb project to log to (default: biogpt-pubmedqa).")
    return p


def isa_text(isa: dict | None) -> str:
    """'AVX2; no AVX-512 BF16, VNNI, AMX' from environment.cpu_isa (the flags CPU speed depends on)."""
    if not isa:
        return "ISA not recorded"
    names = {"avx512_bf16": "AVX-512 BF16", "vnni": "VNNI", "amx_tile": "AMX"}
    has = [v for k, v in names.items() if isa.get(k)]
    lacks = [v for k, v in names.items() if not isa.get(k)]
    return f"{isa.get('capability')}" + (f", {', '.join(has)}" if has else "") + (
        f"; no {', '.join(lacks)}" if lacks else "")


def benchmark_table(rows: list[dict], failed: list[dict]) -> str:
    """The README's results table: per group (device, model, questions) its machine line, then one row per run —
    median pass with its range, speed-up with its interval against the group's baseline, agreement / mean KL against
    it, footprint, % of the measured matmul peak, setup (load excluded: compile, tuning, quantization), padding and
    real tokens/s — and the variants not run, with why. Call after assign_groups."""
    parts = []
    for group in sorted({r["group"] for r in rows}):
        members = [r for r in rows if r["group"] == group]
        first_row = members[0]
        random = first_row["weights"] == "random"
        parts.append(f"**{first_row['model']}** ({'weights: random, accuracy meaningless' if random else 'real weights'}), "
                     f"{first_row['n']} questions — {first_row['device_type']}: {first_row['device_name']} "
                     f"({isa_text(next((r['cpu_isa'] for r in members if r['cpu_isa']), None)) if first_row['device_type'] == 'cpu' else 'GPU'}), "
                     f"{first_row['threads']} threads, torch {first_row['torch']}, {(first_row['date'] or '?')[:10]}\n")
        body = []
        for r in members:
            passes = r["_pass_s"] or []
            spread = f" ({min(passes):.1f}–{max(passes):.1f})" if len(passes) > 1 else ""
            agree = "ref" if r["is_group_baseline"] else (
                "—" if r["agreement"] is None else f"{r['agreement']:.0f} / {fmt_small(r['mean_kl'])}")
            body.append([f"{r['technique']} {r['variant']}", f"{r['dtype']}",
                         (f"{r['pass_s_median_value']:.1f}{spread}" if r["pass_s_median_value"] is not None else "—")
                         + f" ×{len(passes)}", speedup_cell(r, False), agree,
                         fmt(r["footprint_bytes"] / 2**20 if r["footprint_bytes"] is not None else None, 0),
                         fmt(r["roofline_pct"], 0), fmt(r["setup_s"], 0),
                         fmt(100 * r["padding_fraction"] if r["padding_fraction"] is not None else None, 1),
                         fmt(r["tokens_per_s"], 0)])
        parts.append(md_table(["run", "dtype", "pass s, median (min–max) ×passes", "speed-up [95% CI]",
                               "agreement % / mean KL", "footprint MiB", "% of peak", "setup s", "padding %",
                               "real tokens/s"], body) + "\n")
    peaks = sorted({(r["model"], r["dtype"], r["roofline_peak_tflops"]) for r in rows if r.get("roofline_peak_tflops")})
    parts.append("Speed-up: the baseline's median pass ÷ the run's, 95% bootstrap interval over both runs' passes "
                 "(n.s.: it includes 1). % of peak: the forward's nominal FLOP/s ÷ this machine's measured dense "
                 "matmul peak in the run's dtype (the best call of a square torch.mm, the highest its runs "
                 "recorded: " + ", ".join(f"{m} {d} {p * 1e3:.0f} GFLOP/s" for m, d, p in peaks) + "; int8 runs are set "
                 "against the float32 peak, so they can pass 100%). Setup: compile, tuning or quantization, never "
                 "inside a pass. Padding: the share of computed tokens that are padding.\n")
    if failed:
        lines = dict.fromkeys(  # one line per variant and reason, however many models it was skipped for
            f"- `{f['run']}`: " + (f"skipped — {f.get('reason')}" if f.get("skipped")
                                   else f"failed (exit {f.get('returncode')}) — {last_line(f.get('stderr_tail'))}")
            for f in failed)
        parts.append("Not in the table:\n\n" + "\n".join(lines) + "\n")
    return "\n".join(parts)


def build_report(roots: list[Path], out: Path, command: str | None = None) -> dict:
    """Collect, group, plot and write report.md, report.json and table.md (headed by the command that made the
    runs, when given); returns what was written."""
    for root in roots:
        if not root.is_dir():
            raise UsageError(f"results directory not found: {root}")
    rows, failed = collect(roots)
    if not rows and not failed:
        raise UsageError(f"no results.json or error.json under {', '.join(map(str, roots))}")
    groups = assign_groups(rows)
    plots, plot_info = make_plots(rows, groups, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(rows, groups, failed, plots, out, plot_info))
    (out / "table.md").write_text((f"Made by `{command}`\n\n" if command else "") + benchmark_table(rows, failed))
    (out / "report.json").write_text(json.dumps({"groups": groups, "runs": [public(r) for r in rows],
                                                 "failed": failed, "plots": plot_info}, indent=2) + "\n")
    return {"rows": rows, "groups": groups, "failed": failed, "plots": plots, "plot_info": plot_info,
            "report": out / "report.md"}


def main(argv=None):
    args = make_parser().parse_args(argv)
    roots = [Path(d) for d in args.results_dirs]
    out = Path(args.out) if args.out else roots[0]
    report = build_report(roots, out)
    log_wandb(resolve_mode(args.wandb), args.wandb_project, report["rows"], report["failed"], report["plots"], out)
    print(f"report: {report['report']} ({len(report['rows'])} runs in {len(report['groups'])} group(s), "
          f"{len(report['failed'])} failed or skipped); plots: "
          f"{', '.join(str(p) for p in report['plots']) or 'none (no successful run)'}")


if __name__ == "__main__":
    run_main(main)
