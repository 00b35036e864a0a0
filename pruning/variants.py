"""The pruning variants the matrix runs (python -m evaluation.matrix); sweeps/ are written from this list."""
from evaluation.matrix import Variant
from pruning.prune import PruningOptions

VARIANTS = [
    *(Variant(f"pruning-{s}-{x}", PruningOptions, ("--strategy", s, "--sparsity", x))
      for s in ("unstructured", "structured", "block") for x in ("0.3", "0.5", "0.7")),
    Variant("pruning-2of4-0.5", PruningOptions, ("--strategy", "2:4", "--sparsity", "0.5", "--dtype", "bfloat16")),
    Variant("pruning-unstructured-0.5-finetuned", PruningOptions,
            ("--strategy", "unstructured", "--sparsity", "0.5", "--finetune-steps", "20")),
]
