"""Baseline: BioGPT-Large-PubMedQA in float32, eager PyTorch, no optimization.

The reference every technique compares against (pass its run directory as --reference).

    python baseline/baseline.py
    python baseline/baseline.py --model tiny-random --tokenizer-dir ../shared/data/biogpt-large \
        --data-dir ../shared/data/pubmedqa --limit 20
"""
import time

from evaluation import build_parser, config_from_args, evaluate_and_log, load_model, prepare, run_main


def make_parser():
    return build_parser(__doc__.splitlines()[0])


def main():
    cfg = config_from_args(make_parser().parse_args(), technique="baseline", variant="fp32-eager", dtype="float32")
    questions, run_dir = prepare(cfg)
    t0 = time.perf_counter()
    model, tokenizer = load_model(cfg)
    evaluate_and_log(cfg, model, tokenizer, questions, run_dir, load_s=time.perf_counter() - t0)


if __name__ == "__main__":
    run_main(main)
