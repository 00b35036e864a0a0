"""The one run skeleton every technique script uses: parse -> check -> timed load -> timed apply -> evaluate ->
write results/<run>/ -> log to wandb.

A technique script supplies its options dataclass and an `apply(model, tokenizer, cfg, device, questions)` that
returns an
`Applied` (the technique's own record, and a compiled forward where there is one); a few also supply `load`.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .answering import answer_logits, prompt_form, prompt_ids
from .config import Options, RunConfig, parse_config, run_main
from .data import LABELS, load_test_questions
from .harness import evaluate
from .metrics import fidelity
from .modeling import (DTYPES, check_attention, footprint_bytes, load_model, model_device, parameter_count, resolve_device,
                       weights_kind)
from .results import (check_output_dir, check_reference, check_reference_questions, environment, read_per_question,
                      write_run)
from .stats import align, comparison_stats, run_stats
from .telemetry import peak_memory
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
    # the technique allocates outside PyTorch's caching allocator, so on a GPU its peak is NVML's
    memory_outside_torch: bool = False


def default_load(cfg: RunConfig, device: torch.device):
    return load_model(cfg, device)


def main(technique: str, options_cls=Options, apply=None, load=default_load, description: str | None = None):
    """A technique script's whole __main__: parse, then run; bad input is one line and exit code 2."""
    run_main(lambda: run(parse_config(technique, options_cls, description=description), apply, load))


def run(cfg: RunConfig, apply=None, load=default_load) -> dict:
    try:
        return _run(cfg, apply, load)
    except KeyboardInterrupt as e:  # until results/<run>/ is moved into place, there is nothing on disk
        raise KeyboardInterrupt(*(e.args or ("nothing written",))) from None


def check_run(cfg: RunConfig) -> torch.device:
    """The device this run will use, after everything that refuses a run on it before any data or model work
    (the technique's own check, the attention kernels); the matrix skips a variant on the same grounds."""
    device = resolve_device(cfg.device)
    cfg.options.check(cfg, device)
    check_attention(cfg.attn_implementation, device)
    return device


def _run(cfg: RunConfig, apply, load) -> dict:
    device = check_run(cfg)
    run_dir = check_output_dir(cfg)
    reference = check_reference(cfg.reference)
    questions = load_test_questions(cfg.data_dir, cfg.limit)
    if cfg.limit and len(questions) < cfg.limit:
        print(f"--limit {cfg.limit} is more than the {len(questions)} test questions: evaluating all "
              f"{len(questions)}")
    check_reference_questions(reference, [q.pmid for q in questions])
    t0 = time.perf_counter()
    model, tokenizer = load(cfg, device)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    applied = apply(model, tokenizer, cfg, device, questions) if apply else Applied()
    setup_s = time.perf_counter() - t0
    model = applied.model or model
    prompt_ids(tokenizer, model, cfg.prompt)  # --prompt learned on a model without the rows: refused before timing
    return evaluate_and_log(cfg, model, tokenizer, questions, run_dir, device, load_s, setup_s, applied)


def compare_with_reference(reference: str, rows: list[dict], pass_s: list[float], random: bool,
                           device_name: str) -> tuple[dict, dict]:
    """(fidelity, paired statistics) of this run against the reference run, question by question. Correctness
    is the paired basis with real weights, agreement with the reference with random ones; the speed-up interval
    only where both runs timed passes on the same device."""
    ref_dir = check_reference(reference)
    theirs = read_per_question(ref_dir)
    current = {r["pmid"]: {"prediction": r["prediction"], "gold": r["gold"],
                           "logits": [r[f"logit_{x}"] for x in LABELS] if r["logit_yes"] is not None else None}
               for r in rows}
    _, gold, pred, ref_pred = align(current, theirs)
    ref_results = json.loads((ref_dir / "results.json").read_text()) if (ref_dir / "results.json").is_file() else {}
    same_device = (ref_results.get("environment") or {}).get("device_name") == device_name
    ref_pass_s = (ref_results.get("metrics") or {}).get("pass_wall_s_samples") if same_device else None
    paired = comparison_stats(pred, ref_pred, None if random else gold, run_pass_s=pass_s if ref_pass_s else None,
                              ref_pass_s=ref_pass_s)
    return fidelity(theirs, current) | {"reference": reference}, paired


def evaluate_and_log(cfg: RunConfig, model, tokenizer, questions, run_dir: Path, device: torch.device,
                     load_s: float, setup_s: float, applied: Applied) -> dict:
    """Evaluate, write results/<run>/ first, then log to wandb and print the summary."""
    cuda_allocated = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    metrics, rows, history = evaluate(model, tokenizer, questions, cfg, applied.forward or answer_logits,
                                      applied.buckets)
    metrics.update(load_s=load_s, setup_s=setup_s)
    metrics["peak_memory"] = peak_memory(metrics, device.type, applied.memory_outside_torch)
    from .roofline import roofline  # here, not at import: `python -m evaluation.roofline` runs it as __main__

    metrics.update(roofline(metrics["achieved_tflops"], device, DTYPES[cfg.dtype]))
    random = weights_kind(model) == "random"
    metrics["stats"] = run_stats([r["gold"] for r in rows], [r["prediction"] for r in rows],
                                 metrics["pass_wall_s_samples"])
    env = environment(device)
    if cfg.reference:
        metrics["fidelity"], metrics["comparison"] = compare_with_reference(
            cfg.reference, rows, metrics["pass_wall_s_samples"], random, env["device_name"])
    params, nbytes, learned = parameter_count(model), footprint_bytes(model), prompt_ids(tokenizer, model, cfg.prompt)
    results = {
        "config": cfg.to_dict(),
        "run": {"run_name": run_dir.name, "device": str(model_device(model)), "weights": weights_kind(model),
                "prompt_form": prompt_form(learned), "prompt_ids": learned, "questions": len(questions)},
        "environment": env,
        "model": {"parameters": params, "footprint_bytes": nbytes, "bytes_per_parameter": nbytes / params,
                  "cuda_allocated_bytes": cuda_allocated, "weights": weights_kind(model)},
        "metrics": metrics,
        "technique": applied.record | (applied.after_passes() if applied.after_passes else {}),
    }
    write_run(run_dir, results, rows)
    if applied.save is not None:
        applied.save(run_dir)
    try:
        log_to_wandb(cfg, results, rows, history, run_dir, applied.curves)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"results kept in {run_dir}; the wandb run is incomplete") from None
    print_summary(cfg, results, run_dir)
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


def _interval(item: dict | None, fmt: str) -> str:
    if not item or item.get("ci_low") is None:
        return ""
    return f" [{item['ci_low']:{fmt}}, {item['ci_high']:{fmt}}]"


def timing_line(m: dict) -> str:
    """Speed, and how far to trust it: how many timed passes and their spread, or that there were none."""
    q = m["latency_question_ms"]
    speed = f"  speed: {m['throughput_qps']:.1f} questions/s, latency per question p50 {q['p50']:.2f} ms, " \
            f"p99 {q['p99']:.2f} ms"
    passes = m["pass_wall_s_samples"]
    if not passes:
        return speed + " (no timed phase, --min-passes 0: from the cold pass, which includes warm-up)"
    if len(passes) == 1:
        return speed + f" (1 timed pass of {passes[0]:.3f} s: no spread to show; --min-passes 3 gives one)"
    median, low, high = m["pass_wall_s_median"], min(passes), max(passes)
    return speed + (f" (median of {len(passes)} timed passes, {median:.3f} s each; spread {low:.3f}-{high:.3f} s, "
                    f"{(high - low) / median:.0%} of the median)")


def memory_line(m: dict, device_type: str) -> str:
    t, peak = m["telemetry"], m["peak_memory"]
    memory = (f"  memory: {peak['mib']:,.0f} MiB {peak['source']}" if peak["mib"] is not None
              else f"  memory: no {peak['source']} figure")
    if device_type == "cuda":
        energy = (f"energy {t['energy_j_per_question']:.3g} J/question, power {t['power_w_mean']:.0f} W mean"
                  if t.get("energy_j_per_question") is not None else f"no energy figure ({t['nvml_error']})")
        return f"{memory}; {energy}"
    return f"{memory} (no energy figure on a CPU)"


def summary_lines(cfg: RunConfig, results: dict, run_dir: Path) -> list[str]:
    """What was measured, in words a newcomer can read without the code."""
    m, run, env, stats = results["metrics"], results["run"], results["environment"], results["metrics"]["stats"]
    random = run["weights"] == "random"
    lines = [f"{cfg.technique}/{cfg.variant}: {m['n']} questions on {run['device']} ({env['device_name']}), "
             f"{cfg.dtype}, batch size {cfg.batch_size}, {cfg.decode} mode, {run['prompt_form']} prompt",
             f"  accuracy {m['accuracy']:.3f}{_interval(stats['accuracy'], '.3f')}, macro-F1 {m['macro_f1']:.3f}"
             f"{_interval(stats['macro_f1'], '.3f')} (95% bootstrap intervals)"
             + (f", {m['unparsed']} unparsed answers (counted wrong)" if cfg.decode == "generate" else "")
             + ("; weights: random, so these say nothing about the model" if random else ""),
             timing_line(m),
             memory_line(m, env["device_type"]),
             f"  time: load {m['load_s']:.1f} s, setup {m['setup_s']:.1f} s, cold pass {m['cold_pass_s']:.2f} s "
             f"(the pass the answers come from; includes warm-up)"]
    if "fidelity" in m:
        f, c = m["fidelity"], m["comparison"]
        speed = c.get("speedup") or {}
        lines.append(f"  vs reference {Path(f['reference']).name}: agreement {f['agreement']:.1f}%, mean KL "
                     f"{f['mean_kl'] if f['mean_kl'] is not None else float('nan'):.3g}, "
                     f"{c['paired']['right_to_wrong']} right->wrong / {c['paired']['wrong_to_right']} wrong->right "
                     f"({c['paired']['basis'].replace('_', ' ')}), McNemar p {c['paired']['mcnemar_p']:.3g}, "
                     + (f"speed-up {speed['value']:.2f}x{_interval(speed, '.2f')}" if speed.get("value")
                        else "no speed-up (the reference has no timed passes on this device)"))
    lines.append(f"  results: {run_dir}/results.json")
    return lines


def print_summary(cfg: RunConfig, results: dict, run_dir: Path):
    print("\n".join(summary_lines(cfg, results, run_dir)))
