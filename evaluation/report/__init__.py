"""Compare runs: every results.json (and every failed run's error.json) under the given directories becomes one
row of report.md and report.json, a point in three PNG plots and, when wandb is on, a row of a wandb table.

    python -m evaluation.report                                  # results/ -> results/report.md, results/plots/
    python -m evaluation.report results/run_all-X --out reports/X --wandb disabled

Runs are grouped by device, model, decode mode and question set (the PMIDs answered), and runs of different groups
are never compared. A run's comparison (agreement and KL, the paired McNemar test, the speed-up and its interval)
is the one it stored (--paired: against its fp32-eager reference timed in alternating rounds); a run without one is
set against its group's baseline run, timed apart, so its speed-up is never called significant (compare.py). A
failed command is recorded as RUN_DIR/error.json {"command", "returncode", "stderr_tail"} (evaluation.matrix
writes it; "skipped": true + "reason" for a known-broken combination that was not run) and listed under "Failed or
skipped runs".

collect.py reads the runs, groups.py groups them, compare.py sets each against its group's baseline, markdown.py
writes report.md, table.py table.md and plots.py the PNGs; evaluation.tracking.log_report logs it to wandb.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import UsageError
from ..tracking import log_report
from .collect import collect, public
from .groups import assign_groups
from .markdown import QUALITY_COLUMNS, SPEED_COLUMNS, markdown
from .plots import make_plots
from .table import benchmark_table

__all__ = ["QUALITY_COLUMNS", "SPEED_COLUMNS", "build_report", "main", "make_parser"]


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


def main(argv=None):
    args = make_parser().parse_args(argv)
    roots = [Path(d) for d in args.results_dirs]
    out = Path(args.out) if args.out else roots[0]
    report = build_report(roots, out)
    log_report(args.wandb, args.wandb_project, [public(r) for r in report["rows"]], report["failed"],
               report["plots"], out)
    print(f"report: {report['report']} ({len(report['rows'])} runs in {len(report['groups'])} group(s), "
          f"{len(report['failed'])} failed or skipped); plots: "
          f"{', '.join(str(p) for p in report['plots']) or 'none (no successful run)'}")
