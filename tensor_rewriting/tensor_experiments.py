"""Tensor rewriting: BioGPT's answer-logits forward compiled by torch.compile backends or Apache TVM Relax.

Batches are padded to bucket lengths (and the last batch to full size) so each shape compiles once, before the
timed passes; an eager check on the same inputs must agree within the dtype's tolerance or the run exits 1.

    python tensor_rewriting/tensor_experiments.py --backend inductor --mode default --model tiny-random \
        --tokenizer-dir ../shared/data/biogpt-large --data-dir ../shared/data/pubmedqa --limit 16
    python tensor_rewriting/tensor_experiments.py --backend tvm --mode ansor --tvm-trials 64 ...
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # this folder's own modules

import torch

from evaluation import UsageError, build_parser, config_from_args, evaluate_and_log, load_model, prepare, run_main
from evaluation.answering import answer_token_ids
from evaluation.modeling import DTYPES, model_device
from hot_path import DEFAULT_BUCKETS, AnswerLogits, StaticForward, eager_check, score_batches, warm_up

MODES = {"eager": ["default"], "aot_eager": ["default"], "cudagraphs": ["default"],
         "inductor": ["default", "reduce-overhead", "max-autotune"],
         "tvm": ["default", "ansor", "meta-schedule"]}


def bucket_list(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",")})
    except ValueError:
        raise UsageError(f"--buckets must be comma-separated integers, got {text!r}")
    if not values or values[0] <= 0:
        raise UsageError(f"--buckets must be positive lengths, got {text!r}")
    return values


def make_parser():
    p = build_parser(__doc__.splitlines()[0])
    g = p.add_argument_group("tensor rewriting")
    g.add_argument("--backend", choices=list(MODES), default="inductor",
                   help="eager/aot_eager/inductor/cudagraphs: torch.compile with that backend (eager: dynamo "
                        "capture only, the control); tvm: torch.export -> TVM Relax -> LLVM (CPU) or CUDA")
    g.add_argument("--mode", choices=sorted({m for ms in MODES.values() for m in ms}), default="default",
                   help="inductor: default|reduce-overhead|max-autotune; tvm: default (Relax pipeline, dlight on "
                        "GPU; on a CPU unscheduled single-threaded loops: 34 min for one 384-token BioGPT-Large "
                        "question on one Xeon core, see tensor_rewriting/README.md) | ansor = meta-schedule (MetaSchedule auto-tuning); other backends: default")
    # dest differs from RunConfig.dtype, which config_from_args sets from its own argument
    g.add_argument("--dtype", dest="model_dtype", choices=list(DTYPES), default="float32",
                   help="model weights and activations")
    g.add_argument("--buckets", default=",".join(map(str, DEFAULT_BUCKETS)),
                   help="comma-separated sequence lengths each batch is padded up to (one compilation each)")
    g.add_argument("--check-batches", type=int, default=2,
                   help="batches (from the longest) also run in plain eager PyTorch to check the compiled logits")
    g.add_argument("--tvm-trials", type=int, default=64, help="tvm ansor: MetaSchedule trial budget in all")
    g.add_argument("--tvm-work-dir", default="results/tvm-work",
                   help="tvm ansor: MetaSchedule database directory; a later run reuses its tuning records")
    g.add_argument("--tvm-tune-ops", default="matmul",
                   help="tvm ansor: tune only fused kernels whose name holds one of these comma-separated words "
                        "('all': every kernel); the matmuls hold nearly all of the time")
    return p


def check_combination(backend: str, mode: str, device: torch.device):
    if mode not in MODES[backend]:
        valid = "; ".join(f"{b}: {'|'.join(ms)}" for b, ms in MODES.items())
        raise UsageError(f"--backend {backend} has no --mode {mode}; valid combinations: {valid}")
    if backend == "cudagraphs" and device.type != "cuda":
        raise UsageError("--backend cudagraphs needs a CUDA device (CUDA graphs do not exist on CPU)")


def compile_forward(model, answer_ids, args, device):
    """The technique: a callable over the 4 prompt tensors, with .stats() (compilations, build/tune times)."""
    module = AnswerLogits(model, answer_ids)
    if args.backend == "tvm":
        from tvm_backend import TVMCompiler
        ops = None if args.tvm_tune_ops == "all" else args.tvm_tune_ops.split(",")
        return TVMCompiler(module, args.mode, device, args.tvm_trials, args.tvm_work_dir, ops)
    from torch_backends import TorchCompiled
    return TorchCompiled(module, args.backend, args.mode, args.buckets)


def main():
    args = make_parser().parse_args()
    variant = f"{args.backend}-{args.mode}-{args.model_dtype}"
    cfg = config_from_args(args, technique="tensor_rewriting", variant=variant, dtype=args.model_dtype)
    if cfg.decode != "score":
        raise UsageError("tensor_experiments compiles the score path; --decode generate is not supported")
    if args.tvm_trials < 1:
        raise UsageError(f"--tvm-trials must be at least 1, got {args.tvm_trials}")
    if args.check_batches < 1:
        raise UsageError(f"--check-batches must be at least 1, got {args.check_batches}")
    args.buckets = bucket_list(args.buckets)
    check_combination(args.backend, args.mode, torch.device("cuda" if cfg.device != "cpu" and
                                                            torch.cuda.is_available() else "cpu"))
    questions, run_dir = prepare(cfg)
    t0 = time.perf_counter()
    model, tokenizer = load_model(cfg)
    load_s = time.perf_counter() - t0
    device = model_device(model)
    answer_ids = torch.tensor(answer_token_ids(tokenizer), device=device)
    batches = score_batches(model, tokenizer, questions, cfg.batch_size, args.buckets)

    if args.backend == "tvm":
        from tvm_backend import check_indices
        check_indices(batches, model.config)

    t0 = time.perf_counter()
    compiled = compile_forward(model, answer_ids, args, device)
    forward = StaticForward(compiled, min(cfg.batch_size, len(questions)))
    shapes = warm_up(forward, model, batches, answer_ids)
    setup_s = time.perf_counter() - t0
    check = eager_check(forward, model, batches[:args.check_batches], answer_ids, cfg.dtype)
    stats = compiled.stats()
    print(f"compiled {len(shapes)} shape(s) in {setup_s:.1f} s: {stats}; eager check: {check}")
    if not check["passed"]:
        print(f"error: compiled logits differ from eager by max |diff| {check['max_abs_logit_diff']:.3g} > "
              f"tolerance {check['tolerance']:.3g} ({cfg.dtype}) on {check['check_questions']} questions; "
              "no speed reported", file=sys.stderr)
        sys.exit(1)

    # The harness merges `extra` into the results after its passes: recompilations_in_passes is final by then.
    extra = {"backend": args.backend, "mode": args.mode, "buckets": args.buckets, "compiled_shapes": shapes,
             **{f"compile_{k}": v for k, v in stats.items()}, "eager_check": check, "recompilations_in_passes": 0}
    forward.after_call = lambda: extra.update(recompilations_in_passes=compiled.stats()["compilations"]
                                              - stats["compilations"])
    evaluate_and_log(cfg, model, tokenizer, questions, run_dir, load_s=load_s, setup_s=setup_s, extra=extra,
                     forward=forward, buckets=args.buckets)


if __name__ == "__main__":
    run_main(main)
