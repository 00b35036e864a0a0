"""The quantization variants the matrix runs (python -m evaluation.matrix); sweeps/ are written from this list."""
from evaluation.matrix import Variant
from quantization.qat import QATOptions
from quantization.quant_int8_dynamic_eval import PTQOptions

VARIANTS = [
    Variant("quantization-dynamic-int8", PTQOptions, ("--scheme", "dynamic-int8"), ("cpu",)),
    Variant("quantization-dynamic-int8-torchao", PTQOptions, ("--scheme", "dynamic-int8", "--cpu-backend", "torchao")),
    Variant("quantization-weight-only-int8", PTQOptions, ("--scheme", "weight-only-int8")),
    Variant("quantization-weight-only-int4", PTQOptions, ("--scheme", "weight-only-int4")),
    *(Variant(f"qat-{w}", QATOptions, ("--weights", w, "--steps", "10")) for w in ("int4", "int8")),
    Variant("qat-int4-not-converted", QATOptions, ("--weights", "int4", "--steps", "10", "--no-convert")),
]
