"""Compare runs: every results.json (and every failed run's error.json) under the given directories becomes one
row of report.md, report.json, three PNG plots and, when wandb is on, a wandb table.

    python -m evaluation.report                                  # results/ -> results/report.md, results/plots/
    python -m evaluation.report results/run_all-X --out reports/X --wandb disabled

Runs are grouped by device, model, decode mode and question set (the PMIDs answered); ratios (speedup, memory)
are taken only against the baseline run of the same group, so runs on different devices or question sets are
never compared in one ratio. A failed command is recorded as RUN_DIR/error.json
{"command", "returncode", "stderr_tail"} (evaluation.matrix writes it; "skipped": true + "reason" for a
known-broken combination that was not run) and listed under "Failed or skipped runs".
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

from .config import UsageError, run_main
from .report_plots import make_plots
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


def row_from_results(run_dir: Path, results: dict) -> dict:
    cfg, run, env, model, m = (results.get(k) or {} for k in ("config", "run", "environment", "model", "metrics"))
    tele = m.get("telemetry") or {}
    on_gpu = env.get("device_type") == "cuda"
    peak, source = ((m.get("torch_peak_allocated_mib"), "GPU allocated") if on_gpu
                    else (tele.get("rss_peak_mib"), "CPU RSS"))
    energy = tele.get("energy_j_per_question")
    energy_note = None if energy is not None else (tele.get("nvml_error") or "no energy figure recorded")
    fid = m.get("fidelity") or {}
    return {
        "run": run_dir.name, "path": str(run_dir),
        "technique": cfg.get("technique") or "unknown", "variant": cfg.get("variant") or "?",
        "dtype": cfg.get("dtype"), "decode": cfg.get("decode"), "batch_size": cfg.get("batch_size"),
        "model": Path(str(cfg.get("model") or "?").rstrip("/")).name,
        "weights": run.get("weights") or model.get("weights") or "unknown",
        "device_type": env.get("device_type") or "unknown", "device_name": env.get("device_name") or "unknown",
        "date": env.get("date"), "n": m.get("n"), "question_set": question_set(run_dir, results),
        "accuracy": m.get("accuracy"), "macro_f1": m.get("macro_f1"),
        "agreement": fid.get("agreement"), "mean_kl": fid.get("mean_kl"),
        "reference": Path(fid["reference"]).name if fid.get("reference") else None,
        "p50_ms": dig(m, "latency_question_ms", "p50"), "p99_ms": dig(m, "latency_question_ms", "p99"),
        "qps": m.get("throughput_qps"), "peak_mib": peak, "peak_source": source,
        "energy_j_per_q": energy, "energy_note": energy_note,
        "footprint_bytes": model.get("footprint_bytes"), "setup_s": m.get("setup_s"),
    }


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


def assign_groups(rows: list[dict]) -> list[dict]:
    """Letter each comparable group, pick its baseline (the latest baseline run) and compute ratios against it.
    Returns the groups; rows come back sorted: by group, baseline first, then technique and variant."""
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
            r["speedup"] = ratio(r["qps"], base["qps"]) if base else None
            r["mem_ratio"] = ratio(r["peak_mib"], base["peak_mib"]) if base else None
        weights = sorted({r["weights"] for r in members})
        groups.append({"name": name, "device_type": key[0], "device_name": key[1], "model": key[2],
                       "decode": key[3], "question_set": key[4], "weights": ", ".join(weights),
                       "baseline": base["run"] if base else None, "runs": len(members)})
    rows.sort(key=lambda r: (r["group"], not r["is_group_baseline"], r["technique"] != "baseline",
                             r["technique"], r["variant"], r["run"]))
    for g in groups:  # the number a run carries in the plots, also in the table
        for k, r in enumerate((r for r in rows if r["group"] == g["name"]), 1):
            r["plot_id"] = k
    return groups


def ratio(a, b):
    return a / b if a is not None and b else None


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


COLUMNS = ["group", "#", "technique", "variant", "dtype", "device", "weights", "n", "accuracy", "macro-F1",
           "agreement %", "mean KL", "p50 ms/q", "p99 ms/q", "q/s", "speedup", "peak MiB", "mem ratio",
           "J/q", "footprint MiB", "run"]


def table_cells(r: dict, referenced: set[tuple]) -> list[str]:
    random = r["weights"] == "random"
    score = lambda x: fmt(x, 3) + (" (random)" if random and x is not None else "")  # noqa: E731
    agreement = fmt(r["agreement"], 1)
    if r["agreement"] is None and (r["group"], r["run"]) in referenced:
        agreement = "ref"
    peak = fmt(r["peak_mib"], 0) + (f" ({'GPU' if r['peak_source'] == 'GPU allocated' else 'RSS'})"
                                    if r["peak_mib"] is not None else "")
    return [r["group"], r["plot_id"], r["technique"], r["variant"], fmt(r["dtype"]),
            f"{r['device_type']}: {r['device_name']}", r["weights"], fmt(r["n"]), score(r["accuracy"]), score(r["macro_f1"]), agreement,
            fmt_small(r["mean_kl"]), fmt(r["p50_ms"], 2), fmt(r["p99_ms"], 2), fmt(r["qps"], 1),
            fmt(r["speedup"], 2, "×"), peak, fmt(r["mem_ratio"], 2, "×"), fmt(r["energy_j_per_q"], 3),
            fmt(r["footprint_bytes"] / 2**20 if r["footprint_bytes"] is not None else None, 1), f"`{r['run']}`"]


def md_table(header: list[str], body: list[list[str]]) -> str:
    clean = lambda c: str(c).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(clean(c) for c in row) + " |" for row in body])


def last_line(text: str | None) -> str:
    lines = [x for x in (text or "").strip().splitlines() if x.strip()]
    return lines[-1][:200] if lines else "—"


def markdown(rows: list[dict], groups: list[dict], failed: list[dict], plots: list[Path], out: Path) -> str:
    referenced = {(r["group"], r["reference"]) for r in rows if r["reference"]}  # runs others compared against
    parts = [f"# Run comparison\n\nGenerated {time.strftime('%Y-%m-%d %H:%M %Z')} by `python -m evaluation.report` "
             f"from {len(rows)} run(s) and {len(failed)} failed or skipped run(s).\n"]
    parts.append("## Groups\n\nRatios (speedup = q/s ÷ baseline q/s; mem ratio = peak ÷ baseline peak) are taken "
                 "only within a group: same device, model, decode mode and question set.\n")
    parts.append(md_table(["group", "device", "model", "weights", "decode", "question set", "runs", "baseline run"],
                          [[g["name"], f"{g['device_type']}: {g['device_name']}", g["model"], g["weights"],
                            g["decode"], g["question_set"], g["runs"],
                            f"`{g['baseline']}`" if g["baseline"] else "none (no ratios)"] for g in groups]))
    parts.append("\n## Runs\n")
    parts.append(md_table(COLUMNS, [table_cells(r, referenced) for r in rows]))
    notes = ["accuracy and macro-F1 marked **(random)** come from random weights (`weights: random`): they say "
             "nothing about the model; compare such runs by agreement with their reference run instead.",
             "agreement % and mean KL: prediction agreement and KL(reference ‖ run) of the yes/no/maybe distribution "
             "against the run's `--reference`; `ref` marks the run others used as reference.",
             "latency: per question (a batch's time divided by its questions), p50/p99 over the timed passes.",
             "peak MiB: (GPU) = torch peak allocated on the GPU; (RSS) = the process' peak resident memory on the "
             "CPU, sampled during the timed passes, Python and library runtime included — the two are not "
             "comparable."]
    no_energy = sorted({f"{r['device_type']}: {r['energy_note']}" for r in rows if r["energy_j_per_q"] is None})
    if no_energy:
        notes.append("J/q (energy per question) is shown only where NVML measured it; missing because: "
                     + "; ".join(no_energy) + ".")
    parts.append("\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    if plots:
        parts.append("## Plots\n\n" + "\n".join(f"![{p.stem}]({p.relative_to(out)})" for p in plots) + "\n")
    parts.append("## Failed or skipped runs\n")
    if failed:
        parts.append(md_table(["run", "status", "return code", "reason (last line of stderr)"],
                              [[f"`{f['run']}`", "skipped (known broken)" if f.get("skipped") else "failed",
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


# ---------------------------------------------------------------------------------------------- wandb

def log_wandb(mode: str, project: str, rows, failed, plots, out: Path):
    """The same summary as a wandb table (+ plots). wandb trouble is printed, never raised."""
    if mode == "disabled":
        return
    try:
        import wandb

        run = wandb.init(project=project, job_type="report", name=f"report-{time.strftime('%Y%m%d-%H%M%S')}",
                         mode=mode, dir=str(out))
        cols = [k for k in rows[0] if k != "path"] if rows else ["run"]
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
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("results_dirs", nargs="*", default=["results"], metavar="RESULTS_DIR",
                   help="directories searched (recursively) for RUN/results.json and RUN/error.json")
    p.add_argument("--out", default=None,
                   help="where report.md, report.json and plots/ go (default: the first RESULTS_DIR)")
    p.add_argument("--wandb", choices=["auto", "online", "offline", "disabled"], default="auto",
                   help="log the table and plots to wandb; auto: online when an API key or login exists, else offline")
    p.add_argument("--wandb-project", default="biogpt-pubmedqa", help="wandb project name")
    return p


def build_report(roots: list[Path], out: Path) -> dict:
    """Collect, group, plot and write report.md + report.json; returns what was written."""
    for root in roots:
        if not root.is_dir():
            raise UsageError(f"results directory not found: {root}")
    rows, failed = collect(roots)
    if not rows and not failed:
        raise UsageError(f"no results.json or error.json under {', '.join(map(str, roots))}")
    groups = assign_groups(rows)
    plots = make_plots(rows, groups, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(markdown(rows, groups, failed, plots, out))
    (out / "report.json").write_text(json.dumps({"groups": groups, "runs": rows, "failed": failed}, indent=2) + "\n")
    return {"rows": rows, "groups": groups, "failed": failed, "plots": plots, "report": out / "report.md"}


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
