"""Post-training quantization of every decoder Linear: dynamic int8, weight-only int8 or weight-only int4.

dynamic-int8: int8 weights and int8 activations quantized on the fly. On the CPU by default with torch.ao's
quantize_dynamic (fbgemm/onednn prepacked kernels, faster per Linear than torchao's eager int8 path: see
quantization/README.md), or torchao's quantize_ with --cpu-backend torchao; on CUDA always torchao.
weight-only-int8/int4: torchao, int4 only on CUDA (tinygemm layout, bfloat16 activations). No calibration data.

    python quantization/quant_int8_dynamic_eval.py --model tiny-random --tokenizer-dir ../shared/data/biogpt-large \
        --data-dir ../shared/data/pubmedqa --limit 20 --scheme dynamic-int8 --reference results/<fp32 run>
"""
from dataclasses import dataclass

from evaluation import Applied, Options, UsageError, main, option, require_all_converted
from quantization.int8_layers import DYNAMIC_CPU_BACKENDS, INT4_GROUP_SIZES, PTQ_SCHEMES, quantize_decoder


@dataclass(frozen=True)
class PTQOptions(Options):
    scheme: str = option("dynamic-int8", "dynamic-int8: int8 weights and dynamic int8 activations; "
                                         "weight-only-int8/int4: quantized weights, float activations.",
                         choices=PTQ_SCHEMES)
    group_size: int | None = option(None, "weight-only-int4: input channels sharing one scale and zero point; 64 "
                                          "when not given (it divides BioGPT-Large's 1,600 and 6,400).",
                                    choices=INT4_GROUP_SIZES)
    cpu_backend: str | None = option(None, "dynamic-int8 on a CPU: torch-ao (quantize_dynamic: deprecated "
                                           "upstream, fast prepacked kernels; the default) or torchao (quantize_: "
                                           "maintained, unfused in eager).", choices=DYNAMIC_CPU_BACKENDS)

    def __post_init__(self):
        if self.group_size is not None and self.scheme != "weight-only-int4":
            raise UsageError("--group-size applies to --scheme weight-only-int4 only")
        if self.cpu_backend is not None and self.scheme != "dynamic-int8":
            raise UsageError("--cpu-backend applies to --scheme dynamic-int8 only")
        if self.scheme == "weight-only-int4" and self.group_size is None:
            object.__setattr__(self, "group_size", 64)

    @property
    def variant(self) -> str:
        return self.scheme + (f"-g{self.group_size}" if self.group_size else "") + \
            (f"-{self.cpu_backend}" if self.cpu_backend else "")

    @property
    def dtype(self) -> str:
        return "bfloat16" if self.scheme == "weight-only-int4" else "float32"  # tinygemm takes bfloat16 only

    def check(self, cfg, device):
        if self.scheme == "weight-only-int4" and device.type != "cuda":
            raise UsageError(f"--scheme weight-only-int4 is not supported on {device.type}: torchao's int4 "
                             "weight-only kernels (tinygemm) need CUDA; use --device cuda or another scheme")
        if self.cpu_backend is not None and device.type == "cuda":
            raise UsageError("--cpu-backend applies to CPU runs; on CUDA dynamic-int8 is torchao's")


def apply(model, cfg, run) -> Applied:
    opts = cfg.options
    backend = quantize_decoder(model, opts.scheme, run.device, opts.group_size, opts.cpu_backend or "torch-ao")
    return Applied(record={"backend": backend, "linears": require_all_converted(model, f"{opts.scheme} ({backend})")})


if __name__ == "__main__":
    main("quantization", PTQOptions, apply, description=__doc__.splitlines()[0])
