"""Micro-benchmarks and probes: each answers one question about a technique's speed or memory outside the run
skeleton, with the evaluation package's options, prompts, timing and environment record.

    python -m benchmarks.attention_table --help      # or: python benchmarks/attention_table.py --help

attention_table: eager vs SDPA per batch size x sequence length; dynamic_int8: fp32 vs torchao vs torch.ao dynamic
int8, whole model or single Linears, with the top operators; tvm_layers: TVM's build against eager per decoder
layer, projected to full depth; harness_overhead: the bench's timed pass against a plain loop (plain_loop.py);
runtime_profile: ONNX Runtime's pass against eager's, by operator. Each times its contenders interleaved in one
process (interleaved below).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import evaluation  # noqa: F401  first: a Ctrl-C while torch imports is then one line, not a traceback
import torch

from evaluation.config import HelpFormatter, add_options
from evaluation import stats


def parse_options(cls, description: str, argv=None):
    """A benchmark's own options dataclass (evaluation.config.option fields, checked in __post_init__) from the
    command line, for a benchmark that needs none of the run options (data, tokenizer, wandb)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)
    add_options(parser, cls, "benchmark options")
    return cls(**vars(parser.parse_args(argv)))


def interleaved(calls: dict, rounds: int, clock, before=lambda name: None) -> dict[str, list[float]]:
    """Milliseconds of each call, `rounds` times. Every round makes each call once, in an order rotated by one per
    round: load from other processes and slow drifts in the machine's speed fall on all of them alike, and none
    always runs first. `before(name)` runs untimed ahead of each call (e.g. switching a kernel)."""
    names = list(calls)
    samples = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            before(name)
            clock.sync()
            start = clock.mark()
            calls[name]()
            end = clock.mark()
            clock.sync()
            samples[name].append(clock.ms(start, end))
    return samples


def paired_speedup(base_ms: list[float], ms: list[float], flag: str) -> dict:
    """base / this (> 1: faster) over rounds timed together, as the runs' --paired speed-up is computed
    (evaluation.stats.paired_speedup: each ratio taken within one round, so drift between rounds cancels)."""
    ci = stats.paired_speedup(base_ms, ms)
    if ci["reason"]:
        ci["reason"] = f"{ci['n_rounds']} round(s) are too few for an interval ({flag})"
    return ci


def cpu_profiler(**kwargs) -> torch.profiler.profile:
    """torch.profiler over CPU activity. Kineto, its backend, prints a `USDT: ... profiler_start` and a
    `profiler_stop` line per trace (markers meant for its log observers): they sit at its highest log level, above
    the errors torch lets through, so only KINETO_LOG_LEVEL above that (6) drops them, its error lines with them.
    Read once, when the first trace of the process starts; a value the user set is kept."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    return torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], **kwargs)


def write_json(path: str | Path, report: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return path
