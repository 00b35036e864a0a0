"""The precision variants the matrix runs (python -m evaluation.matrix); sweeps/ are written from this list."""
from evaluation.matrix import Variant
from precision_reduction.precision_experiments import PrecisionOptions

# In the CPU benchmark: bfloat16, and float32, the same computation as the baseline: the control whose speed-up
# must come out as no change.
VARIANTS = [Variant(f"precision-{p}", PrecisionOptions, ("--precision", p), ("cpu",) if p in ("float32", "bfloat16")
                    else ()) for p in ("float32", "float16", "bfloat16", "int8", "int4", "float4", "fp8")]
