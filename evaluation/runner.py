"""The one run skeleton every technique script uses: parse -> check -> timed load -> timed apply -> evaluate ->
write results/<run>/ -> log to wandb.

A technique script supplies its options dataclass and an `apply(model, tokenizer, cfg, device, questions)` that
returns an
`Applied` (the technique's own record, and a compiled forward where there is one); a few also supply `load`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .answering import answer_logits, prompt_form
from .config import Options, RunConfig, parse_config, run_main
from .data import LABELS, load_test_questions
from .harness import evaluate
from .metrics import fidelity
from .modeling import footprint_bytes, load_model, model_device, parameter_count, resolve_device, weights_kind
from .results import check_output_dir, check_reference, environment, read_per_question, write_run
from .tracking import Tracker


@dataclass
class Applied:
    """What a technique's apply step hands on."""
    model: torch.nn.Module | None = None         # a replacement model (None: the loaded one, changed in place)
    record: dict = field(default_factory=dict)   # the technique's own results: results.json "technique"
    forward: Callable | None = None              # forward(model, batch, answer_ids) -> [B, 3]; None: eager
    buckets: list[int] | None = None             # pad batch lengths up to these (compiled code)
    curves: dict[str, list[dict]] | None = None  # per-step training records, logged to wandb as NAME/*
    after_passes: Callable[[], dict] | None = None  # figures only known after the timed passes (joins record)
    save: Callable[[Path], object] | None = None   # writes artifacts into the run directory once it exists


def default_load(cfg: RunConfig, device: torch.device):
    return load_model(cfg, device)


def main(technique: str, options_cls=Options, apply=None, load=default_load, description: str | None = None):
    """A technique script's whole __main__: parse, then run; bad input is one line and exit code 2."""
    run_main(lambda: run(parse_config(technique, options_cls, description=description), apply, load))


def run(cfg: RunConfig, apply=None, load=default_load) -> dict:
    device = resolve_device(cfg.device)
    cfg.options.check_device(device)  # before any data or model work
    run_dir = check_output_dir(cfg)
    check_reference(cfg.reference)
    questions = load_test_questions(cfg.data_dir, cfg.limit)
    t0 = time.perf_counter()
    model, tokenizer = load(cfg, device)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    applied = apply(model, tokenizer, cfg, device, questions) if apply else Applied()
    setup_s = time.perf_counter() - t0
    model = applied.model or model
    return evaluate_and_log(cfg, model, tokenizer, questions, run_dir, device, load_s, setup_s, applied)


def fidelity_against(reference: str, rows: list[dict]) -> dict:
    current = {r["pmid"]: {"prediction": r["prediction"],
                           "logits": [r[f"logit_{x}"] for x in LABELS] if r["logit_yes"] is not None else None}
               for r in rows}
    return fidelity(read_per_question(check_reference(reference)), current) | {"reference": reference}


def evaluate_and_log(cfg: RunConfig, model, tokenizer, questions, run_dir: Path, device: torch.device,
                     load_s: float, setup_s: float, applied: Applied) -> dict:
    """Evaluate, write results/<run>/ first, then log to wandb and print the summary."""
    cuda_allocated = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    metrics, rows, history = evaluate(model, tokenizer, questions, cfg, applied.forward or answer_logits,
                                      applied.buckets)
    metrics.update(load_s=load_s, setup_s=setup_s)
    if cfg.reference:
        metrics["fidelity"] = fidelity_against(cfg.reference, rows)
    params, nbytes = parameter_count(model), footprint_bytes(model)
    results = {
        "config": cfg.to_dict(),
        "run": {"run_name": run_dir.name, "device": str(model_device(model)), "weights": weights_kind(model),
                "prompt_form": prompt_form(tokenizer)},
        "environment": environment(device),
        "model": {"parameters": params, "footprint_bytes": nbytes, "bytes_per_parameter": nbytes / params,
                  "cuda_allocated_bytes": cuda_allocated, "weights": weights_kind(model)},
        "metrics": metrics,
        "technique": applied.record | (applied.after_passes() if applied.after_passes else {}),
    }
    write_run(run_dir, results, rows)
    if applied.save is not None:
        applied.save(run_dir)
    tracker = Tracker(cfg, results, run_dir)
    for step, h in enumerate(history):
        tracker.log(h, step=step)
    for name, records in (applied.curves or {}).items():
        tracker.curve(name, records)
    tracker.summary(results, rows)
    tracker.finish()
    print_summary(cfg, results, run_dir)
    return results


def print_summary(cfg: RunConfig, results: dict, run_dir: Path):
    m = results["metrics"]
    note = "  [weights: random — not a model accuracy]" if results["run"]["weights"] == "random" else ""
    lat = m["latency_question_ms"]
    print(f"{cfg.technique}/{cfg.variant} on {results['environment']['device_name']}: n={m['n']} "
          f"accuracy={m['accuracy']:.3f} macro_f1={m['macro_f1']:.3f}{note}")
    print(f"  pass {m['pass_wall_s_median']:.3f} s (cold {m['cold_pass_s']:.3f} s), {m['throughput_qps']:.1f} q/s, "
          f"latency/question p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms, load {m['load_s']:.1f} s")
    print(f"  results: {run_dir}/results.json")
