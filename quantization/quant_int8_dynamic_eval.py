"""Post-training quantization of every decoder Linear: dynamic int8, weight-only int8 or weight-only int4.

dynamic-int8: int8 weights and int8 activations quantized on the fly. On the CPU by default with torch.ao's
quantize_dynamic (fbgemm/onednn prepacked kernels: measured 2-3x faster per Linear than torchao's eager int8
path on torch 2.13 / torchao 0.18, see quantization/README.md), or torchao's quantize_ with --cpu-backend
torchao; on CUDA always torchao. weight-only-int8/int4: torchao, int4 only on CUDA (tinygemm layout, bfloat16
activations). No calibration data is needed.

    python quantization/quant_int8_dynamic_eval.py --model tiny-random --tokenizer-dir ../shared/data/biogpt-large \
        --data-dir ../shared/data/pubmedqa --limit 20 --scheme dynamic-int8 --reference results/<fp32 run>
"""
import sys
import time
from importlib.metadata import version
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's evaluation/ and quantization/

from evaluation import (build_parser, config_from_args, evaluate_and_log, load_model, prepare, resolve_device,
                        run_main, weight_bytes)
from quantization.int8_layers import (DYNAMIC_CPU_BACKENDS, PTQ_SCHEMES, kernel_path, packed_weight_bytes, ptq_config,
                                     quantize_decoder)


def make_parser():
    p = build_parser(__doc__.splitlines()[0])
    g = p.add_argument_group("quantization")
    g.add_argument("--scheme", choices=PTQ_SCHEMES, default="dynamic-int8",
                   help="dynamic-int8: int8 weights + dynamic int8 activations; weight-only-int8/int4: "
                        "quantized weights, float activations")
    g.add_argument("--group-size", type=int, choices=[32, 64, 128, 256], default=128,
                   help="weight-only-int4: input channels sharing one scale/zero point")
    g.add_argument("--cpu-backend", choices=DYNAMIC_CPU_BACKENDS, default="torch-ao",
                   help="dynamic-int8 on the CPU: torch.ao quantize_dynamic (deprecated upstream, fast prepacked "
                        "kernels) or torchao quantize_ (maintained, unfused in eager); ignored on CUDA")
    return p


def main():
    args = make_parser().parse_args()
    device = resolve_device(args.device)
    # tinygemm's int4 kernel takes bfloat16 activations only; everything else quantizes the float32 model
    dtype = "bfloat16" if args.scheme == "weight-only-int4" else "float32"
    backend = args.cpu_backend if device.type == "cpu" and args.scheme == "dynamic-int8" else "torchao"
    variant = args.scheme + (f"-g{args.group_size}" if args.scheme == "weight-only-int4" else "") + f"-{backend}"
    cfg = config_from_args(args, technique="quantization", variant=variant, dtype=dtype)
    ptq_config(args.scheme, device, args.group_size)  # int4 on a CPU fails here, before any loading
    questions, run_dir = prepare(cfg)

    t0 = time.perf_counter()
    model, tokenizer = load_model(cfg)
    load_s = time.perf_counter() - t0
    float_bytes = weight_bytes(model)

    t0 = time.perf_counter()
    quantize_decoder(model, args.scheme, device, args.group_size, backend)
    setup_s = time.perf_counter() - t0

    quantized_bytes = weight_bytes(model) + packed_weight_bytes(model)
    path = kernel_path(model)
    print(f"quantized {sum(k['count'] for k in path['decoder_linears'])} decoder Linears with {backend}: "
          f"{float_bytes / 2**20:.1f} MiB -> {quantized_bytes / 2**20:.1f} MiB; "
          + "; ".join(f"{k['module']} / {k['weight_tensor']} {k['storage']}" for k in path["decoder_linears"]))
    evaluate_and_log(cfg, model, tokenizer, questions, run_dir, load_s=load_s, setup_s=setup_s, extra={
        "quantization": {"scheme": args.scheme, "backend": backend, "group_size": args.group_size
                         if args.scheme == "weight-only-int4" else None, "kernel_path": path,
                         "float_weight_bytes": float_bytes, "quantized_weight_bytes": quantized_bytes,
                         "weight_bytes_ratio": quantized_bytes / float_bytes,
                         "torch": torch.__version__, "torchao": version("torchao")}})


if __name__ == "__main__":
    run_main(main)
