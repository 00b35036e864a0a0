"""Pruning: unstructured, structured, block or 2:4 sparsity of BioGPT's decoder Linear layers, optional recovery.

    python pruning/pruning.py --strategy unstructured --sparsity 0.5 --reference results/<baseline run>
    python pruning/pruning.py --strategy structured --sparsity 0.3 --heads-fraction 0.2 --save-dir pruned/
    python pruning/pruning.py --strategy 2:4 --dtype bfloat16 --finetune-steps 200
    python pruning/pruning.py --model tiny-random --tokenizer-dir ../shared/data/biogpt-large \
        --data-dir ../shared/data/pubmedqa --limit 20 --strategy block --sparsity 0.3 --block-size 32
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's module, also when imported by path

import sparsify  # noqa: E402
from evaluation import (UsageError, build_parser, config_from_args, evaluate_and_log, load_model,  # noqa: E402
                        load_finetuning_data, prepare, run_main)
from evaluation.finetune import finetune  # noqa: E402

STRATEGIES = ["unstructured", "structured", "block", "2:4"]


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def make_parser():
    p = build_parser(__doc__.splitlines()[0])
    g = p.add_argument_group("pruning")
    g.add_argument("--strategy", choices=STRATEGIES, required=True,
                   help="unstructured: L1 magnitude; structured: remove FFN neurons (and heads); "
                        "block: zero lowest-norm tiles; 2:4: 2 of every 4 weights zero (sparse kernels on GPU)")
    g.add_argument("--sparsity", type=fraction, default=0.5,
                   help="fraction of decoder Linear weights pruned, in [0, 1); structured: fraction of FFN neurons "
                        "removed per layer; 2:4: always 0.5")
    g.add_argument("--scope", choices=["global", "layer"], default="global",
                   help="unstructured/block: one ranking over all decoder matrices, or the same sparsity per matrix")
    g.add_argument("--block-size", type=int, choices=[4, 8, 16, 32, 64], default=32, help="block: tile side")
    g.add_argument("--heads-fraction", type=fraction, default=0.0,
                   help="structured: fraction of attention heads also removed per layer")
    g.add_argument("--dtype", dest="weight_dtype", choices=["float32", "bfloat16", "float16"], default="float32",
                   help="weights dtype; 2:4 sparse kernels need bfloat16/float16 on a CUDA GPU")
    g.add_argument("--finetune-steps", type=non_negative_int, default=0,
                   help="recovery fine-tuning steps on the PubMedQA train/dev half, mask fixed (0: none)")
    g.add_argument("--finetune-lr", type=float, default=1e-5, help="recovery fine-tuning peak learning rate")
    g.add_argument("--finetune-batch-size", type=int, choices=[1, 2, 4, 8, 16], default=4,
                   help="recovery fine-tuning questions per step")
    g.add_argument("--save-dir", default=None, help="save the pruned model here (save_pretrained, safetensors)")
    return p


def prune_model(model, opts) -> dict:
    """Apply the strategy; masks stay as hooks (fine-tuning keeps them fixed) until make_permanent."""
    if opts["strategy"] == "unstructured":
        sparsify.prune_unstructured(model, opts["sparsity"], opts["scope"])
    elif opts["strategy"] == "block":
        sparsify.prune_block(model, opts["sparsity"], opts["block_size"], opts["scope"])
    elif opts["strategy"] == "2:4":
        sparsify.prune_two_four(model)
    else:
        return sparsify.prune_structured(model, opts["sparsity"], opts["heads_fraction"])
    return {}


def recover(cfg, model, tokenizer) -> dict:
    """Recovery fine-tuning on the train/dev half; the shared loop refuses any test PMID."""
    train, test_pmids = load_finetuning_data(cfg.data_dir)  # all 500 test PMIDs, not just the --limit ones
    t0 = time.perf_counter()
    dtype, on_gpu = next(model.parameters()).dtype, next(model.parameters()).is_cuda
    model.float()  # fp32 master weights: a bf16/fp16 weight cannot hold 1e-5-sized updates
    history = finetune(model, tokenizer, train, steps=cfg.options["finetune_steps"], test_pmids=test_pmids,
                       batch_size=cfg.options["finetune_batch_size"], lr=cfg.options["finetune_lr"], seed=cfg.seed,
                       bf16_autocast=on_gpu)
    model.to(dtype)
    return {"finetune_s": time.perf_counter() - t0, "finetune_questions": len(train),
            "finetune_test_pmids_seen": len(test_pmids & {q.pmid for q in train}), "finetune_history": history}


def main():
    args = make_parser().parse_args()
    if args.strategy == "2:4" and args.sparsity != 0.5:
        raise UsageError(f"2:4 sparsity is 0.5 by construction; got --sparsity {args.sparsity}")
    if args.heads_fraction and args.strategy != "structured":
        raise UsageError("--heads-fraction applies to --strategy structured only")
    variant = f"{args.strategy.replace(':', 'of')}-{args.sparsity:g}"
    cfg = config_from_args(args, technique="pruning", variant=variant, dtype=args.weight_dtype)
    questions, run_dir = prepare(cfg)
    if args.save_dir and Path(args.save_dir).resolve() == run_dir.resolve():
        raise UsageError(f"--save-dir {args.save_dir} is the run's results directory, which is rewritten; pick another")
    t0 = time.perf_counter()
    model, tokenizer = load_model(cfg)
    load_s = time.perf_counter() - t0

    original = sparsify.weight_counts(model)
    t0 = time.perf_counter()
    extra = prune_model(model, cfg.options)
    setup_s = time.perf_counter() - t0
    if cfg.options["finetune_steps"]:
        extra |= recover(cfg, model, tokenizer)
    sparsify.make_permanent(model)
    extra |= sparsify.measure_sparsity(model, original)
    extra["parameters_nonzero"] = sum(int(p.count_nonzero()) for p in model.parameters())
    if cfg.options["save_dir"]:
        model.save_pretrained(cfg.options["save_dir"])
        tokenizer.save_pretrained(cfg.options["save_dir"])
    extra["sparse_kernels"], extra["sparse_kernels_reason"] = False, "dense kernels: not a 2:4 run"
    if cfg.options["strategy"] == "2:4":
        t0 = time.perf_counter()
        extra["sparse_kernels"], extra["sparse_kernels_reason"] = sparsify.to_semi_structured(model)
        extra["sparse_convert_s"] = time.perf_counter() - t0
        print(f"2:4: sparse kernels {'ON' if extra['sparse_kernels'] else 'OFF'} ({extra['sparse_kernels_reason']})")
    print(f"pruning: {cfg.options['strategy']} requested {cfg.options['sparsity']:.3f}, measured "
          f"{extra['sparsity_measured']:.4f} overall, by type "
          + " ".join(f"{t}={s:.3f}" for t, s in extra["sparsity_by_type"].items()))
    curves = {"finetune": extra["finetune_history"]} if "finetune_history" in extra else None
    evaluate_and_log(cfg, model, tokenizer, questions, run_dir, load_s=load_s, setup_s=setup_s, extra=extra,
                     curves=curves)


if __name__ == "__main__":
    run_main(main)
