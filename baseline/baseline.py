"""Baseline: BioGPT-Large-PubMedQA in float32, eager PyTorch, no optimization.

The reference every technique compares against (pass its run directory as --reference).

    python baseline/baseline.py
    python baseline/baseline.py --model tiny-random --tokenizer-dir ../shared/data/biogpt-large \
        --data-dir ../shared/data/pubmedqa --limit 20
"""
from evaluation import main

if __name__ == "__main__":
    main("baseline", description=__doc__.splitlines()[0])
