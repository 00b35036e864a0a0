"""Weights & Biases logging. Online with a key or login, offline otherwise; trouble never ends a run."""
from __future__ import annotations

import netrc
import os
import sys
import time
from pathlib import Path

from .data import LABELS


def resolve_mode(requested: str) -> str:
    if requested != "auto":
        return requested
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "online"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        if netrc.netrc().authenticators("api.wandb.ai"):
            return "online"
    except (OSError, netrc.NetrcParseError):
        pass
    return "offline"


def why_offline(requested: str) -> str:
    """The reason prefix of the offline line: auto fell back to offline (not a choice the user made)."""
    return "no API key or login found, so " if requested == "auto" and not os.environ.get("WANDB_MODE") else ""


def offline_line(run, why: str, what: str) -> str:
    where = run.dir.rsplit("/files", 1)[0]
    return f"wandb: {why}{what} was logged offline in {where}; upload it with `wandb sync {where}`"


INIT_TIMEOUT_S = 10.0  # wandb waits 90 s by default: without network a run's last line came that much later


def init_timeout_s() -> float:
    """How long an online run may take to start before it is logged offline (env WANDB_INIT_TIMEOUT, wandb's own)."""
    try:
        return float(os.environ.get("WANDB_INIT_TIMEOUT", INIT_TIMEOUT_S))
    except ValueError:
        return INIT_TIMEOUT_S


def settings(wandb):
    """Silent (no banner, no sparklines: the lines a user acts on are ours) and bounded in its start."""
    return wandb.Settings(silent=True, init_timeout=init_timeout_s())


def _why(e: Exception) -> str:
    """An exception in one line: wandb's messages run to several (advice on settings)."""
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


def tags(cfg, weights: str) -> list[str]:
    return [cfg.technique, cfg.variant, cfg.decode, cfg.dtype, f"weights: {weights}"]


class Tracker:
    """A wandb run or nothing. Every call is guarded: wandb trouble is printed, never raised."""

    def __init__(self, cfg, results: dict, run_dir: Path):
        """`results`: the run's record; its config, resolved values (device used, weights, prompt form,
        questions) and environment become the wandb config, for filtering and grouping runs."""
        self.run, self.mode = None, resolve_mode(cfg.wandb)
        if self.mode == "disabled":
            return
        self.why_offline = why_offline(cfg.wandb)
        try:
            self.run = self._start(cfg, results, run_dir)
            if self.mode == "online":
                print(f"wandb: logging to {self.run.url}")
            return
        except Exception as e:
            reason = _why(e)
        if self.mode == "online":  # no network, a bad key, the server down: the run is kept, offline
            self.mode = "offline"
            self.why_offline = (f"the online run did not start ({reason}; limit {init_timeout_s():g} s, env "
                                "WANDB_INIT_TIMEOUT), so ")
            try:
                self.run = self._start(cfg, results, run_dir)
                return
            except Exception as e:
                reason = _why(e)
        print(f"wandb: could not start a run ({reason}); results are on disk in {run_dir}", file=sys.stderr)

    def _start(self, cfg, results: dict, run_dir: Path):
        import wandb

        self.wandb = wandb
        run = results["run"]
        config = results["config"] | {"resolved": run, "environment": results.get("environment")}
        return wandb.init(project=cfg.wandb_project, group=cfg.technique, name=run["run_name"],
                          tags=tags(cfg, run["weights"]), config=config, mode=self.mode, dir=str(run_dir.parent),
                          reinit="finish_previous", settings=settings(wandb))

    def _guard(self, fn, *args, **kwargs):
        if self.run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:
            print(f"wandb: {fn.__name__} failed ({type(e).__name__}: {e}); results stay on disk", file=sys.stderr)

    def curve(self, name: str, records: list[dict], step: str = "step"):
        """Records (each with a `step` key: a training step, a batch or pass index) as wandb history named NAME/*
        on their own x axis, NAME/STEP. They stay out of the run summary (summary="none"): the summary holds
        the run's metrics only, not whatever the last history row happened to be."""
        def _curve():
            self.run.define_metric(f"{name}/{step}", summary="none")
            self.run.define_metric(f"{name}/*", step_metric=f"{name}/{step}", summary="none")
            for record in records:
                self.run.log({f"{name}/{key}": value for key, value in record.items()})
        if records:
            self._guard(_curve)

    def summary(self, results: dict, rows: list[dict]):
        def _summary():
            from .stats import flat_summary

            m = results["metrics"]
            self.run.summary.update({"model": results["model"], "technique": results["technique"], **m,
                                     **flat_summary(m["stats"] | m.get("comparison", {}))})
            table = self.wandb.Table(columns=list(rows[0]), data=[list(r.values()) for r in rows])
            gold = [LABELS.index(r["gold"]) for r in rows]
            # unparsed answers have no class index: shown as the last column of the matrix
            pred = [LABELS.index(r["prediction"]) if r["prediction"] in LABELS else len(LABELS) for r in rows]
            names = list(LABELS) + (["unparsed"] if len(LABELS) in pred else [])
            self.run.log({"predictions": table,
                          "confusion_matrix": self.wandb.plot.confusion_matrix(y_true=gold, preds=pred,
                                                                               class_names=names)})
        self._guard(_summary)

    def finish(self):
        if self.run is not None:
            self._guard(self.run.finish)
            if self.mode == "offline":
                print(offline_line(self.run, self.why_offline, "the run"))


def log_report(requested: str, project: str, rows: list[dict], failed: list[dict], plots: list[Path], out: Path):
    """The report as a wandb run of job_type=report: its rows as a table (the report's row fields, statistics
    under stats.flat_summary's names: accuracy_ci_low, mcnemar_p, speedup_ci_low, ...), the failed runs and the
    plots. Silent like Tracker; one line says where it went. wandb trouble is printed, never raised."""
    mode = resolve_mode(requested)
    if mode == "disabled":
        return
    try:
        import wandb

        run = wandb.init(project=project, job_type="report", name=f"report-{time.strftime('%Y%m%d-%H%M%S')}",
                         mode=mode, dir=str(out), settings=settings(wandb))
        cols = [k for k in rows[0] if k != "path"] if rows else ["run"]
        data = {"report": wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows])}
        fcols = ["run", "skipped", "returncode", "reason", "command", "stderr_tail"]
        data["failed_runs"] = wandb.Table(columns=fcols, data=[[f.get(c) for c in fcols] for f in failed])
        data.update({p.stem: wandb.Image(str(p)) for p in plots})
        run.log(data)
        where = f"wandb: the report was logged to {run.url}" if mode == "online" else None
        run.finish()
        print(where or offline_line(run, why_offline(requested), "the report"))
    except Exception as e:
        print(f"wandb: report not logged ({_why(e)}); it is on disk", file=sys.stderr)
