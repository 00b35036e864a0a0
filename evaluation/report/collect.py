"""Collecting runs: every results.json under the given directories becomes one row (a flat dict of what the
report shows), every error.json (or unreadable results.json) one failed or skipped entry."""
from __future__ import annotations

import hashlib
import json
import os
import statistics
from pathlib import Path

from .. import stats
from ..results import read_per_question
from ..telemetry import NVML_PEAK_USED

SKIP_DIRS = {"wandb", "plots", "__pycache__"}


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


def pass_samples(m: dict) -> list[float] | None:
    """The timed passes' wall times in seconds (metrics.pass_wall_s_samples); None when there are none."""
    samples = m.get("pass_wall_s_samples")
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


def row_from_results(run_dir: Path, results: dict) -> dict:
    """The row of one successful run. Memory: the peak column is the run's own metrics.peak_memory (its source says
    which figure it is); the memory plot and mem ratio use it on a GPU, and on a CPU the model footprint (weights as
    stored), because the process RSS is mostly Python and library runtime (~600 MiB for a 15 MiB model)."""
    cfg, run, env, model, m = (results.get(k) or {} for k in ("config", "run", "environment", "model", "metrics"))
    tele = m.get("telemetry") or {}
    on_gpu = env.get("device_type") == "cuda"
    peak = m.get("peak_memory") or {}
    footprint = model.get("footprint_bytes")
    mem, mem_source = ((peak.get("mib"), peak.get("source")) if on_gpu
                       else (footprint / 2**20 if isinstance(footprint, (int, float)) else None, "footprint"))
    energy = tele.get("energy_j_per_question")
    energy_note = None if energy is not None else (tele.get("nvml_error") or "no energy figure recorded")
    fid = m.get("fidelity") or {}
    samples = pass_samples(m)
    pq = per_question(run_dir)
    roofline_fraction = m.get("roofline_fraction")
    row = {
        "run": run_dir.name, "path": str(run_dir),
        "technique": cfg.get("technique") or "unknown", "variant": cfg.get("variant") or "?",
        "dtype": cfg.get("dtype"), "decode": cfg.get("decode"), "batch_size": cfg.get("batch_size"),
        "model": Path(str(cfg.get("model") or "?").rstrip("/")).name,
        "weights": run.get("weights") or "unknown",
        "device_type": env.get("device_type") or "unknown", "device_name": env.get("device_name") or "unknown",
        "date": env.get("date"), "n": m.get("n"), "question_set": question_set(run_dir, results),
        "accuracy": m.get("accuracy"), "macro_f1": m.get("macro_f1"),
        "agreement": fid.get("agreement"), "mean_kl": fid.get("mean_kl"),
        "reference": Path(fid["reference"]).name if fid.get("reference") else None,
        "reference_source": "--reference" if fid.get("agreement") is not None else None,
        "p50_ms": dig(m, "latency_question_ms", "p50"), "p99_ms": dig(m, "latency_question_ms", "p99"),
        "qps": m.get("throughput_qps"), "peak_mib": peak.get("mib"), "peak_source": peak.get("source"),
        "nvml_peak": peak.get("source") == NVML_PEAK_USED,
        "gpu_mem_used_peak_mib": tele.get("gpu_mem_used_peak_mib"),
        "mem_mib": mem, "mem_source": mem_source,
        "energy_j_per_q": energy, "energy_note": energy_note,
        "footprint_bytes": footprint, "setup_s": m.get("setup_s"),
        "padding_fraction": m.get("padding_fraction"), "tokens_per_s": m.get("tokens_per_s"),
        "threads": env.get("torch_threads"), "cpu_isa": env.get("cpu_isa"), "torch": env.get("torch"),
        # achieved TFLOP/s ÷ the measured dense-matmul peak, in percent
        "roofline_pct": 100.0 * roofline_fraction if isinstance(roofline_fraction, (int, float)) else None,
        "achieved_tflops": m.get("achieved_tflops"), "matmul_peak_tflops": m.get("matmul_peak_tflops"),
        "pass_s_median_value": statistics.median(samples) if samples else None,
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


def public(r: dict) -> dict:
    """A row without the per-question data and pass times it was computed from."""
    return {k: v for k, v in r.items() if not k.startswith("_")}
