"""Precision reduction: BioGPT-Large-PubMedQA in float32, float16, bfloat16, bitsandbytes int8/NF4/FP4 or torchao fp8.

    python precision_reduction/precision_experiments.py --precision bfloat16
    python precision_reduction/precision_experiments.py --precision int4 --double-quant --reference results/<fp32-run>
    python precision_reduction/precision_experiments.py --model tiny-random --tokenizer-dir ../shared/data/biogpt-large \
        --data-dir ../shared/data/pubmedqa --limit 20 --precision int8 --int8-threshold 6.0
"""
from dataclasses import dataclass

from evaluation import Applied, Options, UsageError, load_model, main, option, require_all_converted
from precision_reduction.precisions import BNB_TYPES, FLOAT_PRECISIONS, PRECISIONS, check_fp8_device, load_bnb, to_fp8


@dataclass(frozen=True)
class PrecisionOptions(Options):
    precision: str = option("bfloat16", "float32/float16/bfloat16: the whole model in that dtype; int8: "
                                        "bitsandbytes LLM.int8; int4: bitsandbytes NF4; float4: bitsandbytes FP4; "
                                        "fp8: torchao float8 weights and dynamic float8 activations (CUDA compute "
                                        "capability 8.9 or newer).", choices=PRECISIONS)
    compute_dtype: str | None = option(None, "int8/int4/float4/fp8: dtype of activations and of the modules left "
                                             "unquantized (embeddings, layer norms, LM head); bfloat16 when not "
                                             "given.", choices=["bfloat16", "float16"])
    int8_threshold: float | None = option(None, "int8: LLM.int8 outlier threshold; activation columns above it run "
                                                "in 16-bit (0: none); 6.0 when not given.")
    double_quant: bool = option(False, "int4/float4: also quantize the per-block absmax scales (bitsandbytes "
                                       "double quantization).")

    def __post_init__(self):
        # an option the chosen precision does not use is refused, so the record holds only what ran
        floating = self.precision in FLOAT_PRECISIONS
        if floating and self.compute_dtype is not None:
            raise UsageError(f"--compute-dtype applies to quantized precisions, not {self.precision}")
        if self.precision != "int8" and self.int8_threshold is not None:
            raise UsageError("--int8-threshold applies to --precision int8 only")
        if self.double_quant and self.precision not in ("int4", "float4"):
            raise UsageError("--double-quant applies to --precision int4 and float4 only")
        if self.int8_threshold is not None and self.int8_threshold < 0:
            raise UsageError(f"--int8-threshold must be >= 0, got {self.int8_threshold}")
        if not floating and self.compute_dtype is None:
            object.__setattr__(self, "compute_dtype", "bfloat16")
        if self.precision == "int8" and self.int8_threshold is None:
            object.__setattr__(self, "int8_threshold", 6.0)

    @property
    def variant(self) -> str:
        return self.precision

    @property
    def dtype(self) -> str:
        return self.precision if self.precision in FLOAT_PRECISIONS else self.compute_dtype

    def check(self, cfg, device):
        if self.precision == "fp8":
            check_fp8_device(device)


def load(cfg, device):
    """bitsandbytes quantizes while it loads: that load is the technique's own step (apply), timed as setup."""
    return None if cfg.options.precision in BNB_TYPES else load_model(cfg, device)


def apply(model, cfg, run) -> Applied:
    opts = cfg.options
    if opts.precision in BNB_TYPES:
        model = load_bnb(cfg, run.device)
        return Applied(model=model, record={
            "quantized_while_loading": True, "linears": require_all_converted(model, f"bitsandbytes {opts.precision}")})
    if opts.precision == "fp8":
        granularity = to_fp8(model)
        return Applied(record={"fp8_scale_granularity": granularity,
                               "linears": require_all_converted(model, "torchao fp8")})
    return Applied()  # a 16/32-bit cast: loading in that dtype was all


if __name__ == "__main__":
    main("precision_reduction", PrecisionOptions, apply, load, description=__doc__.splitlines()[0])
