"""Dynamic int8 against fp32 in one process: interleaved timings on the same batches, and each one's top operators.

On a shared, busy CPU separate runs see different load; alternating fp32 / torchao / torch.ao forwards on the same
batches gives a fairer ratio, and torch.profiler shows where each path spends its time. With --linear-tokens, the
model's three decoder Linear shapes alone, on random tokens.

    python -m benchmarks.dynamic_int8 --model biogpt-base-random --tokenizer-dir ../shared/data/biogpt-large \
        --data-dir ../shared/data/pubmedqa --limit 8 --batch-size 4 --rounds 3 --out results/dynamic-int8.json
    python -m benchmarks.dynamic_int8 --model biogpt-base-random --linear-tokens 2048 --rounds 5
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import evaluation  # noqa: F401  first: a Ctrl-C while torch imports is then one line, not a traceback
import torch

from benchmarks import cpu_profiler, interleaved, paired_speedup, write_json
from evaluation import PRESETS, Options, UsageError, load_model, option, parse_config, run_main
from evaluation.answering import answer_logits
from evaluation.resolve import resolve
from evaluation.results import environment
from evaluation.telemetry import Clock, latency_stats
from quantization.int8_layers import quantize_decoder

CPU = torch.device("cpu")  # torch.ao's dynamic int8 kernels (fbgemm) are CPU-only


@dataclass(frozen=True)
class ProfileOptions(Options):
    rounds: int = option(3, "Timed rounds; each runs every model on every batch once.")
    out: str | None = option(None, "Write the timings and operator tables as JSON here.")
    linear_tokens: int | None = option(None, "Instead of the model, time its three decoder Linear shapes alone on "
                                             "this many random tokens (light: no model is loaded; presets only).")

    def __post_init__(self):
        if self.rounds < 1 or (self.linear_tokens is not None and self.linear_tokens < 1):
            raise UsageError(f"--rounds and --linear-tokens must be at least 1, got {self.rounds} and "
                             f"{self.linear_tokens}")

    @property
    def variant(self) -> str:
        return "dynamic-int8-profile"


def quantized_copies(model) -> dict:
    models = {"fp32": model}
    for backend in ("torchao", "torch-ao"):
        models[backend] = copy.deepcopy(model)
        quantize_decoder(models[backend], "dynamic-int8", CPU, cpu_backend=backend)
    return models


def top_ops(fn, n: int = 8) -> list[dict]:
    with cpu_profiler() as prof:
        fn()
    averages = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in averages)
    return [{"op": e.key, "self_ms": e.self_cpu_time_total / 1e3, "share": e.self_cpu_time_total / total,
             "calls": e.count} for e in sorted(averages, key=lambda e: -e.self_cpu_time_total)[:n]]


def compare(models: dict, call, rounds: int, title: str) -> dict:
    """Each model warmed up once (first-call allocations, weight packing), all timed interleaved, then each
    profiled once: its times, its speed-up over fp32 paired by round, its top operators."""
    for m in models.values():
        call(m)
    samples = interleaved({name: (lambda m=m: call(m)) for name, m in models.items()}, rounds, Clock(CPU))
    result = {name: {"ms": latency_stats(samples[name]), "samples_ms": samples[name],
                     "speedup_vs_fp32": paired_speedup(samples["fp32"], samples[name], "--rounds"),
                     "top_ops": top_ops(lambda m=m: call(m))} for name, m in models.items()}
    print(title)
    for name, r in result.items():
        print(f"  {name:9s} median {r['ms']['p50']:9.1f} ms  x{r['speedup_vs_fp32']['value']:.2f} vs fp32   "
              + ", ".join(f"{op['op']} {op['share']:.0%}" for op in r["top_ops"][:4]))
    return result


def linear_shapes(cfg) -> dict:
    """fp32 vs both int8 paths on single Linears of the preset's shapes."""
    h, ffn = PRESETS[cfg.model]["hidden_size"], PRESETS[cfg.model]["intermediate_size"]
    report = {}
    for k, n in [(h, h), (h, ffn), (ffn, h)]:
        holder = torch.nn.Module()  # where quantize_decoder looks for the decoder's Linears
        holder.biogpt = torch.nn.Module()
        holder.biogpt.layers = torch.nn.Sequential(torch.nn.Linear(k, n)).eval()
        x = torch.randn(cfg.options.linear_tokens, k)
        report[f"{k}->{n}"] = compare(quantized_copies(holder), lambda m: m.biogpt.layers(x), cfg.options.rounds,
                                      f"Linear {k}->{n}, {len(x)} tokens:")
    return report


def main():
    cfg = parse_config("quantization", ProfileOptions, description=__doc__.splitlines()[0])
    opts = cfg.options
    if cfg.device == "cuda":
        raise UsageError("dynamic_int8 compares CPU kernels: --device cuda is not supported")
    if opts.linear_tokens and cfg.model not in PRESETS:
        raise UsageError(f"--linear-tokens needs a preset model ({', '.join(PRESETS)}), got {cfg.model!r}")
    report = {"config": cfg.to_dict(), "environment": environment(CPU)}
    with torch.inference_mode():
        if opts.linear_tokens:
            report["linears"] = linear_shapes(cfg)
        else:
            run = resolve(cfg, CPU, Path(opts.out or "."))  # prompts and batches before the weights, as a run does
            model = load_model(cfg, CPU)
            batches, answer_ids = run.prompts.batches, run.prompts.answer_ids
            report |= {"model": run.identity, "questions": len(run.questions), "batches": len(batches)}
            report["forward"] = compare(quantized_copies(model), lambda m: [answer_logits(m, b, answer_ids)
                                                                            for b in batches], opts.rounds,
                                        f"{cfg.model}, {len(run.questions)} questions in {len(batches)} batches:")
    if opts.out:
        print(f"wrote {write_json(opts.out, report)}")


if __name__ == "__main__":
    run_main(main)
