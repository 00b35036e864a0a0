"""Precision reduction: BioGPT-Large-PubMedQA in float32, float16, bfloat16, bitsandbytes int8/NF4/FP4 or torchao fp8.

    python precision_reduction/precision_experiments.py --precision bfloat16
    python precision_reduction/precision_experiments.py --precision int4 --double-quant --reference results/<fp32-run>
    python precision_reduction/precision_experiments.py --model tiny-random --tokenizer-dir ../shared/data/biogpt-large \
        --data-dir ../shared/data/pubmedqa --limit 20 --precision int8 --int8-threshold 6.0
"""
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from evaluation import UsageError, build_parser, config_from_args, evaluate_and_log, load_model, prepare, run_main
from evaluation.modeling import model_device, parameter_count, weight_bytes

from precision_reduction.precisions import (BNB_4BIT_TYPES, PRECISIONS, bnb_config, check_fp8_device, load_bnb,
                                            quant_state_bytes, to_fp8)


def make_parser():
    p = build_parser(__doc__.splitlines()[0])
    g = p.add_argument_group("precision options")
    g.add_argument("--precision", choices=PRECISIONS, default="bfloat16",
                   help="float32/float16/bfloat16: whole model in that dtype; int8: bitsandbytes LLM.int8; "
                        "int4: bitsandbytes NF4; float4: bitsandbytes FP4; fp8: torchao float8 weights and "
                        "dynamic float8 activations (CUDA compute capability >= 8.9 only)")
    g.add_argument("--compute-dtype", choices=["bfloat16", "float16"], default="bfloat16",
                   help="int8/int4/float4/fp8: dtype of activations and of the unquantized modules (embeddings, "
                        "layer norms, LM head); int4/float4 dequantize their weights to it for each matmul")
    g.add_argument("--int8-threshold", type=float, default=6.0,
                   help="int8: LLM.int8 outlier threshold; activation columns above it run in 16-bit (0: none)")
    g.add_argument("--double-quant", action="store_true",
                   help="int4/float4: also quantize the per-block absmax scales (bitsandbytes double quantization)")
    return p


def main():
    args = make_parser().parse_args()
    if args.int8_threshold < 0:
        raise UsageError(f"--int8-threshold must be >= 0, got {args.int8_threshold}")
    precision = args.precision
    dtype = precision if precision in ("float32", "float16", "bfloat16") else args.compute_dtype
    cfg = config_from_args(args, technique="precision", variant=precision, dtype=dtype)
    if precision == "fp8":
        check_fp8_device(cfg.device)  # fail before any data or model work
    questions, run_dir = prepare(cfg)

    t0 = time.perf_counter()
    if precision in ("int8", "int4", "float4"):
        model, tokenizer = load_bnb(cfg, bnb_config(precision, args.compute_dtype, args.int8_threshold,
                                                    args.double_quant))
    else:
        model, tokenizer = load_model(cfg)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fp8_scales = to_fp8(model) if precision == "fp8" else None
    setup_s = time.perf_counter() - t0

    # The measured footprint: CUDA bytes allocated once the weights are in place; on a CPU, the bytes of every
    # stored tensor (parameters, buffers and bitsandbytes' quantization state).
    device = model_device(model)
    state_bytes = quant_state_bytes(model)
    measured = torch.cuda.memory_allocated(device) if device.type == "cuda" else weight_bytes(model) + state_bytes
    params = parameter_count(model)
    evaluate_and_log(cfg, model, tokenizer, questions, run_dir, load_s=load_s, setup_s=setup_s, extra={
        "precision": precision,
        "compute_dtype": dtype,
        "bnb_quant_type": "llm.int8" if precision == "int8" else BNB_4BIT_TYPES.get(precision),
        "int8_threshold": args.int8_threshold if precision == "int8" else None,
        "double_quant": args.double_quant if precision in BNB_4BIT_TYPES else None,
        "fp8_scale_granularity": fp8_scales,
        "weight_bytes_measured": measured,
        "weight_bytes_source": "cuda_memory_allocated" if device.type == "cuda" else "stored_tensors",
        "quant_state_bytes": state_bytes,
        "parameters_logical": params,
        "bytes_per_parameter": measured / params,
    })


if __name__ == "__main__":
    run_main(main)
