"""Per-layer cost of TVM's untuned build against eager PyTorch, measured on 1- and 2-layer cuts of a preset.

On an LLVM target TVM's default Relax pipeline applies no schedules: every kernel is a plain loop nest on one
core, so a full BioGPT-Large forward can take hours. This builds the preset's architecture cut to 1 and to 2
decoder layers, runs the same export -> Relax -> compile path as tensor_experiments.py on the same padded prompt
batch, and takes one layer's cost as the difference. The full depth is then projected as
(1-layer time - one layer) + layers x one layer, for TVM and eager alike; run tensor_experiments.py at a size
that finishes to check the projection against a whole-model measurement.

    python tensor_rewriting/profile_tvm_layers.py --model biogpt-large-random \
        --tokenizer-dir ../shared/data/biogpt-large --data-dir ../shared/data/pubmedqa \
        --limit 8 --batch-size 8 --out results/tvm-layers-large-8.json
"""
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import evaluation  # first: a Ctrl-C while torch imports is then one line, not a traceback
import torch

from evaluation import (PRESETS, Options, UsageError, load_test_questions, load_tokenizer, option, parse_config,
                        run_main)
from evaluation.answering import answer_logits, encode_all, prompt_ids
from evaluation.modeling import random_model
from tensor_rewriting.hot_path import DEFAULT_BUCKETS, AnswerLogits, CompiledForward
from tensor_rewriting.tvm_relax import TVMCompiler, check_indices


@dataclass(frozen=True)
class ProfileOptions(Options):
    rounds: int = option(2, "Timed calls per model and backend, after one warm-up.")
    out: str | None = option(None, "Write the timings and the projection as JSON here.")

    def __post_init__(self):
        if self.rounds < 1:
            raise UsageError(f"--rounds must be at least 1, got {self.rounds}")

    @property
    def variant(self) -> str:
        return "tvm-layer-profile"


def median_seconds(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_cut(cfg, layers: int, tokenizer, questions, rounds: int) -> dict:
    """Eager and TVM-default seconds per call of one padded batch on the preset cut to `layers` layers."""
    model = random_model(cfg.model, cfg.seed, torch.float32, torch.device("cpu"), num_hidden_layers=layers)
    prompts = encode_all(tokenizer, model.config, questions, "score", cfg.batch_size,
                         prompt_ids(tokenizer, model.config, cfg.prompt), torch.device("cpu"), buckets=DEFAULT_BUCKETS)
    batch, answer_ids = prompts.batches[0], prompts.answer_ids
    check_indices([batch], model.config)
    with torch.inference_mode():
        want = answer_logits(model, batch, answer_ids)  # also the eager warm-up
        eager_s = median_seconds(lambda: answer_logits(model, batch, answer_ids), rounds)
    compiled = TVMCompiler(AnswerLogits(model, answer_ids), "default", torch.device("cpu"), 1, "", None)
    forward = CompiledForward(compiled)
    t0 = time.perf_counter()
    got = forward(model, batch, answer_ids)  # export + build + first call
    first_call_s = time.perf_counter() - t0
    tvm_s = median_seconds(lambda: forward(model, batch, answer_ids), rounds)
    row = {"layers": layers, "shape": list(batch.input_ids.shape), "eager_s": eager_s, "tvm_s": tvm_s,
           "tvm_first_call_s": first_call_s, **{f"tvm_{k}": v for k, v in compiled.stats().items()},
           "max_abs_logit_diff": (got - want).abs().max().item()}
    print(f"{layers} layer(s), batch {row['shape']}: eager {eager_s:.2f} s, tvm default {tvm_s:.2f} s "
          f"(build {row['tvm_build_s']:.0f} s), max |diff| {row['max_abs_logit_diff']:.1e}", flush=True)
    return row


def main():
    cfg = parse_config("tensor_rewriting", ProfileOptions, description=__doc__.splitlines()[0])
    args = cfg.options
    if cfg.model not in PRESETS:
        raise UsageError(f"--model must be a preset ({', '.join(PRESETS)}): the cuts are random-weight models")
    torch.set_grad_enabled(False)
    tokenizer = load_tokenizer(cfg.model, cfg.tokenizer_dir)
    questions = load_test_questions(cfg.data_dir, cfg.limit)[:cfg.batch_size]
    cuts = [time_cut(cfg, n, tokenizer, questions, args.rounds) for n in (1, 2)]
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
          f"per call ({ratio:.0f}x eager)")
    if args.out:
        report = {"model": cfg.model, "weights": "random", "layers": depth, "threads": torch.get_num_threads(),
                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cuts": cuts,
                  "projected": projected, "tvm_over_eager": ratio}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    run_main(main)
