"""The one run skeleton every technique script uses: parse -> check -> resolve (data, tokenizer, prompts, batches,
--reference: no weights yet) -> timed load -> timed apply -> evaluate -> write results/<run>/ -> log to wandb.

A technique script supplies its options dataclass and an `apply(model, cfg, run) -> Applied` (run: the Resolved
record, with the batches every pass will time); a few also supply `load(cfg, device) -> model`.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .answering import answer_logits
from .config import Options, RunConfig, parse_config, run_main
from .data import LABELS
from .harness import evaluate
from .metrics import fidelity
from .modeling import DTYPES, check_attention, footprint_bytes, load_model, parameter_count, resolve_device
from .paired import NAME, PairedReference
from .resolve import Resolved, resolve
from .results import check_output_dir, environment, release_run_dirs, share_files, write_run
from .stats import align, comparison_stats, run_stats
from .summary import print_summary
from .telemetry import peak_memory
from .tracking import Tracker


@dataclass
class Applied:
    """What a technique's apply step hands on."""
    model: torch.nn.Module | None = None         # a replacement model (None: the loaded one, changed in place)
    record: dict = field(default_factory=dict)   # the technique's own results: results.json "technique"
    forward: Callable | None = None              # forward(model, batch, answer_ids) -> [B, 3]; None: eager
    curves: dict[str, list[dict]] | None = None  # per-step training records, logged to wandb as NAME/*
    after_passes: Callable[[], dict] | None = None  # figures only known after the timed passes (joins record)
    save: Callable[[Path], object] | None = None   # writes artifacts into the run directory once it exists
    # the technique allocates outside PyTorch's caching allocator, so on a GPU its peak is NVML's
    memory_outside_torch: bool = False
    footprint_bytes: int | None = None           # the technique's own weights where they are not the torch model's


def main(technique: str, options_cls=Options, apply=None, load=load_model, description: str | None = None):
    """A technique script's whole __main__: parse, then run; bad input is one line and exit code 2."""
    run_main(lambda: run(parse_config(technique, options_cls, description=description), apply, load))


def run(cfg: RunConfig, apply=None, load=load_model) -> dict:
    try:
        return _run(cfg, apply, load)
    except KeyboardInterrupt as e:  # until results/<run>/ is moved into place, there is nothing on disk
        raise KeyboardInterrupt(*(e.args or ("nothing written",))) from None
    finally:
        release_run_dirs()  # check_output_dir's claim on the run directory, however the run ended


def check_run(cfg: RunConfig) -> torch.device:
    """The device this run will use, after everything that refuses a run on it before any data or model work
    (the technique's own check, the attention kernels); the matrix skips a variant on the same grounds."""
    device = resolve_device(cfg.device)
    cfg.options.check(cfg, device)
    check_attention(cfg.attn_implementation, device)
    return device


def _run(cfg: RunConfig, apply, load) -> dict:
    device = check_run(cfg)
    resolved = resolve(cfg, device, check_output_dir(cfg))
    t0 = time.perf_counter()
    model = load(cfg, device)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    applied = apply(model, cfg, resolved) if apply else Applied()
    setup_s = time.perf_counter() - t0
    with PairedReference(cfg) if cfg.paired else contextlib.nullcontext() as paired:
        return evaluate_and_log(cfg, applied.model or model, resolved, load_s, setup_s, applied, paired)


def compare_with_reference(name: str, ref_rows: dict, rows: list[dict], pass_s: list[float],
                           ref_pass_s: list[float] | None, random: bool, timed_in_rounds: bool) -> tuple[dict, dict]:
    """(fidelity, paired statistics) of this run against a reference's answers (PMID -> prediction, gold,
    logits), question by question. Correctness is the paired basis with real weights, agreement with the reference
    with random ones; the speed-up from pass times taken in alternating rounds (--paired) or apart."""
    current = {r["pmid"]: {"prediction": r["prediction"], "gold": r["gold"],
                           "logits": [r[f"logit_{x}"] for x in LABELS] if r["logit_yes"] is not None else None}
               for r in rows}
    _, gold, pred, ref_pred = align(current, ref_rows)
    paired = comparison_stats(pred, ref_pred, None if random else gold, run_pass_s=pass_s if ref_pass_s else None,
                              ref_pass_s=ref_pass_s or None, timed_in_rounds=timed_in_rounds)
    return fidelity(ref_rows, current) | {"reference": name}, paired


def comparison(run: Resolved, metrics: dict, rows: list[dict], paired, device_name: str) -> tuple[dict, dict]:
    """Against the paired reference (timed in rounds with this run) or the --reference run (timed apart: its pass
    times only where it ran on this device)."""
    random, pass_s = run.weights == "random", metrics["pass_wall_s_samples"]
    if paired is not None:
        return compare_with_reference(NAME, paired.rows, rows, pass_s, metrics["reference_pass_wall_s_samples"],
                                      random, timed_in_rounds=True)
    ref = run.reference
    return compare_with_reference(str(ref.path), ref.rows, rows, pass_s,
                                  ref.pass_s if ref.device_name == device_name else None, random, timed_in_rounds=False)


def evaluate_and_log(cfg: RunConfig, model, run: Resolved, load_s: float, setup_s: float, applied: Applied,
                     paired: PairedReference | None = None) -> dict:
    """Evaluate (with the paired reference's passes alternating, under --paired), write results/<run>/ first, then
    log to wandb and print the summary."""
    device = run.device
    cuda_allocated = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    metrics, rows, history = evaluate(model, cfg, run, applied.forward or answer_logits, paired)
    metrics.update(load_s=load_s, setup_s=setup_s)
    metrics["peak_memory"] = peak_memory(metrics, device.type, applied.memory_outside_torch)
    from .roofline import roofline  # here, not at import: `python -m evaluation.roofline` runs it as __main__

    metrics.update(roofline(metrics["achieved_tflops"], device, DTYPES[cfg.dtype]))
    metrics["stats"] = run_stats([r["gold"] for r in rows], [r["prediction"] for r in rows],
                                 metrics["pass_wall_s_samples"])
    env = environment(device)
    if run.reference or paired:
        metrics["fidelity"], metrics["comparison"] = comparison(run, metrics, rows, paired, env["device_name"])
    params = parameter_count(model)
    nbytes = applied.footprint_bytes if applied.footprint_bytes is not None else footprint_bytes(model)
    results = {
        "config": cfg.to_dict(),
        "run": run.record(),
        "environment": env,
        "model": {"identity": run.identity, "parameters": params, "footprint_bytes": nbytes,
                  "bytes_per_parameter": nbytes / params, "cuda_allocated_bytes": cuda_allocated},
        "metrics": metrics,
        "technique": applied.record | (applied.after_passes() if applied.after_passes else {}),
    }
    write_run(run.run_dir, results, rows)
    if applied.save is not None:
        applied.save(run.run_dir)
        share_files(run.run_dir)
    try:
        log_to_wandb(cfg, results, rows, history, run.run_dir, applied.curves)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"results kept in {run.run_dir}; the wandb run is incomplete") from None
    print_summary(cfg, results, run.run_dir)
    return results


def log_to_wandb(cfg: RunConfig, results: dict, rows: list[dict], history: list[dict], run_dir: Path,
                 curves: dict[str, list[dict]] | None):
    tracker = Tracker(cfg, results, run_dir)
    tracker.curve("batch", history, step="index")
    tracker.curve("pass", [{"index": i, "wall_s": s} for i, s in enumerate(results["metrics"]["pass_wall_s_samples"])],
                  step="index")
    for name, records in (curves or {}).items():
        tracker.curve(name, records)
    tracker.summary(results, rows)
    tracker.finish()
