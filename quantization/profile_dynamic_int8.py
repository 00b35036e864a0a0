"""Profile dynamic int8 against fp32 in one process: interleaved timings on the same batches + top operators.

On a shared, busy CPU separate runs see different load; alternating fp32 / torchao / torch.ao forwards on the
same batch gives a fairer ratio. torch.profiler then shows where each path spends its time.

    python quantization/profile_dynamic_int8.py --model biogpt-base-random --tokenizer-dir ../shared/data/biogpt-large \
        --data-dir ../shared/data/pubmedqa --limit 8 --batch-size 4 --rounds 3 --out results/profile-dynamic-int8.json
    python quantization/profile_dynamic_int8.py --model biogpt-base-random --linear-tokens 2048 --rounds 5
"""
import copy
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import evaluation  # first: a Ctrl-C while torch imports is then one line, not a traceback
import torch

from evaluation import (PRESETS, Options, UsageError, load_model, load_test_questions, load_tokenizer, option,
                        parse_config, run_main)
from evaluation.answering import answer_logits, encode_all, prompt_ids
from quantization.int8_layers import quantize_decoder


@dataclass(frozen=True)
class ProfileOptions(Options):
    rounds: int = option(3, "Timed rounds; each runs every model on every batch.")
    out: str | None = option(None, "Write the timings and operator tables as JSON here.")
    linear_tokens: int | None = option(None, "Instead of the model, time its three decoder Linear shapes alone on "
                                             "this many random tokens (light: no model is loaded; presets only).")

    @property
    def variant(self) -> str:
        return "profile-dynamic-int8"


def interleaved(models: dict, fn, rounds: int) -> dict:
    """Median seconds per model; every round runs each model once, so load changes hit all alike."""
    for m in models.values():  # warm-up (first-call allocations, weight packing)
        fn(m)
    times = {name: [] for name in models}
    for _ in range(rounds):
        for name, m in models.items():
            t0 = time.perf_counter()
            fn(m)
            times[name].append(time.perf_counter() - t0)
    return times


def quantized_copies(model) -> dict:
    models = {"fp32": model}
    for backend in ("torchao", "torch-ao"):
        models[backend] = copy.deepcopy(model)
        quantize_decoder(models[backend], "dynamic-int8", torch.device("cpu"), cpu_backend=backend)
    return models


def linear_shapes(cfg) -> dict:
    """fp32 vs both int8 paths on single Linears of the preset's shapes (wrapped so quantize_decoder applies)."""
    h, ffn = PRESETS[cfg.model]["hidden_size"], PRESETS[cfg.model]["intermediate_size"]
    report = {}
    for k, n in [(h, h), (h, ffn), (ffn, h)]:
        holder = torch.nn.Module()
        holder.biogpt = torch.nn.Module()
        holder.biogpt.layers = torch.nn.Sequential(torch.nn.Linear(k, n)).eval()
        x = torch.randn(cfg.options.linear_tokens, k)
        with torch.inference_mode():
            times = interleaved(quantized_copies(holder), lambda m: m.biogpt.layers(x), cfg.options.rounds)
            ops = {name: top_ops(lambda m=m: m.biogpt.layers(x)) for name, m in quantized_copies(holder).items()}
        median = {name: statistics.median(t) for name, t in times.items()}
        report[f"{k}->{n}"] = {"median_ms": {n_: v * 1e3 for n_, v in median.items()},
                               "speedup_vs_fp32": {n_: median["fp32"] / v for n_, v in median.items()},
                               "top_ops": ops}
        print(f"Linear {k}->{n}, {x.shape[0]} tokens: " + "  ".join(
            f"{n_} {v * 1e3:.1f} ms (x{median['fp32'] / v:.2f})" for n_, v in median.items()))
        print("    torchao: " + ", ".join(f"{op['op']} {op['share']:.0%}" for op in ops["torchao"][:6]))
    return report


def top_ops(fn, n=8) -> list[dict]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:n]
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in events]


def main():
    cfg = parse_config("quantization", ProfileOptions, description=__doc__.splitlines()[0])
    if cfg.options.linear_tokens:
        if cfg.model not in PRESETS:
            raise UsageError(f"--linear-tokens needs a preset model ({', '.join(PRESETS)}), got {cfg.model!r}")
        return write(cfg, {"model": cfg.model, "threads": torch.get_num_threads(), "linears": linear_shapes(cfg)})
    model, tokenizer = load_model(cfg, torch.device("cpu")), load_tokenizer(cfg.model, cfg.tokenizer_dir)
    questions = load_test_questions(cfg.data_dir, cfg.limit)
    prompts = encode_all(tokenizer, model.config, questions, "score", cfg.batch_size,
                         prompt_ids(tokenizer, model.config, cfg.prompt), torch.device("cpu"))
    batches, answer_ids = prompts.batches, prompts.answer_ids
    models = quantized_copies(model)

    def run(m):
        return [answer_logits(m, b, answer_ids) for b in batches]

    times = interleaved(models, run, cfg.options.rounds)
    median = {name: statistics.median(t) for name, t in times.items()}
    report = {"model": cfg.model, "questions": len(questions), "batch_size": cfg.batch_size,
              "threads": torch.get_num_threads(), "rounds_s": times, "median_s": median,
              "speedup_vs_fp32": {n: median["fp32"] / s for n, s in median.items()},
              "top_ops": {name: top_ops(lambda m=m: run(m)) for name, m in models.items()}}
    for name in models:
        print(f"{name:9s} median {median[name]:.2f} s  x{report['speedup_vs_fp32'][name]:.2f} vs fp32  "
              f"rounds {', '.join(f'{t:.2f}' for t in times[name])}")
        for op in report["top_ops"][name][:5]:
            print(f"    {op['op']:40s} {op['self_ms']:9.1f} ms  {op['share']:5.1%}  x{op['calls']}")
    write(cfg, report)


def write(cfg, report: dict):
    if cfg.options.out:
        Path(cfg.options.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.options.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    run_main(main)
