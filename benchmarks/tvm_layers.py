"""Per-layer cost of TVM's default build against eager PyTorch, measured on 1- and 2-layer cuts of a preset.

A full-depth TVM build of a large preset can take longer than a run should wait for. This builds the preset's
architecture cut to 1 and to 2 decoder layers, runs the same export -> Relax -> compile path as
tensor_experiments.py --backend tvm --mode default on the first (longest) of the batches a run would time, and takes
one layer's cost as the difference. The full depth is then projected as (1-layer time - one layer) + layers x one
layer, for TVM and eager alike; run tensor_experiments.py at a size that finishes to check the projection.

    python -m benchmarks.tvm_layers --model biogpt-large-random --tokenizer-dir ../shared/data/biogpt-large \
        --data-dir ../shared/data/pubmedqa --limit 8 --batch-size 8 --out results/tvm-layers-large-8.json
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import evaluation  # noqa: F401  first: a Ctrl-C while torch imports is then one line, not a traceback
import torch

from benchmarks import interleaved, write_json
from evaluation import PRESETS, Options, UsageError, option, parse_config, run_main
from evaluation.answering import answer_logits
from evaluation.modeling import random_model
from evaluation.resolve import resolve
from evaluation.results import environment
from evaluation.telemetry import Clock, latency_stats
from tensor_rewriting.hot_path import DEFAULT_BUCKETS, AnswerLogits, CompiledForward
from tensor_rewriting.tvm_relax import TVMCompiler, check_indices

CPU = torch.device("cpu")


@dataclass(frozen=True)
class LayerOptions(Options):
    rounds: int = option(2, "Timed calls per cut and backend, interleaved, after one warm-up.")
    out: str | None = option(None, "Write the timings and the projection as JSON here.")

    def __post_init__(self):
        if self.rounds < 1:
            raise UsageError(f"--rounds must be at least 1, got {self.rounds}")

    @property
    def variant(self) -> str:
        return "tvm-layer-profile"

    def batch_buckets(self) -> list[int]:
        return DEFAULT_BUCKETS  # TVM builds static shapes: each batch padded up to a bucket length


def time_cut(cfg, layers: int, batch, answer_ids) -> dict:
    """Eager and TVM-default seconds per call of one padded batch on the preset cut to `layers` layers."""
    model = random_model(cfg.model, cfg.seed, torch.float32, CPU, num_hidden_layers=layers)
    check_indices([batch], model.config)
    want = answer_logits(model, batch, answer_ids)  # also the eager warm-up
    compiled = TVMCompiler(AnswerLogits(model, answer_ids), "default", CPU, 1, "", None)
    forward = CompiledForward(compiled)
    t0 = time.perf_counter()
    got = forward(model, batch, answer_ids)  # export + build + first call
    first_call_s = time.perf_counter() - t0
    samples = interleaved({"eager": lambda: answer_logits(model, batch, answer_ids),
                           "tvm": lambda: forward(model, batch, answer_ids)}, cfg.options.rounds, Clock(CPU))
    row = {"layers": layers, "shape": list(batch.input_ids.shape),
           **{f"{name}_s": latency_stats(ms)["p50"] / 1e3 for name, ms in samples.items()},
           "samples_ms": samples, "tvm_first_call_s": first_call_s,
           **{f"tvm_{k}": v for k, v in compiled.stats().items()},
           "max_abs_logit_diff": (got - want).abs().max().item()}
    print(f"{layers} layer(s), batch {row['shape']}: eager {row['eager_s']:.2f} s, tvm default {row['tvm_s']:.2f} s "
          f"(build {row['tvm_build_s']:.0f} s), max |diff| {row['max_abs_logit_diff']:.1e}", flush=True)
    return row


def main():
    cfg = parse_config("tensor_rewriting", LayerOptions, description=__doc__.splitlines()[0])
    if cfg.model not in PRESETS:
        raise UsageError(f"--model must be a preset ({', '.join(PRESETS)}): the cuts are random-weight models")
    if cfg.device == "cuda":
        raise UsageError("tvm_layers measures the CPU build: --device cuda is not supported")
    run = resolve(cfg, CPU, Path(cfg.options.out or "."))  # the prompts and batches a run would time
    with torch.no_grad():
        cuts = [time_cut(cfg, n, run.prompts.batches[0], run.prompts.answer_ids) for n in (1, 2)]
    depth = PRESETS[cfg.model]["num_hidden_layers"]
    projected = {}
    for backend in ("eager", "tvm"):
        one, two = cuts[0][f"{backend}_s"], cuts[1][f"{backend}_s"]
        outside, per_layer = 2 * one - two, two - one
        projected[backend] = {"per_layer_s": per_layer, "outside_layers_s": outside,
                              "full_depth_s": outside + depth * per_layer}
    ratio = projected["tvm"]["full_depth_s"] / projected["eager"]["full_depth_s"]
    print(f"projected full {cfg.model} ({depth} layers), batch {cuts[0]['shape']}: eager "
          f"{projected['eager']['full_depth_s']:.1f} s, tvm default {projected['tvm']['full_depth_s']:.1f} s "
          f"per call ({ratio:.1f}x eager)")
    if cfg.options.out:
        report = {"config": cfg.to_dict(), "environment": environment(CPU), "model": run.identity, "layers": depth,
                  "cuts": cuts, "projected": projected, "tvm_over_eager": ratio}
        print(f"wrote {write_json(cfg.options.out, report)}")


if __name__ == "__main__":
    run_main(main)
