"""Baseline: BioGPT-Large-PubMedQA in float32, eager PyTorch, no optimization.

The reference every technique compares against (pass its run directory as --reference).

    python baseline/baseline.py
    python baseline/baseline.py --model tiny-random --tokenizer-dir ../shared/data/biogpt-large \
        --data-dir ../shared/data/pubmedqa --limit 20
"""
from dataclasses import dataclass

from evaluation import Options, main


@dataclass(frozen=True)
class BaselineOptions(Options):
    """No options of its own: float32, eager, nothing applied."""


if __name__ == "__main__":
    main("baseline", BaselineOptions, description=__doc__.splitlines()[0])
