"""wandb agent entry point: run a technique script (as `python -m MODULE`) with the sweep's flags, expanding a
combined `--flags=...`.

A grid sweep can't say "these two values only together" (2:4 pruning only at sparsity 0.5; a torch.compile mode
only with its backend), so each sweep lists a variant's flags as one parameter, `flags` (written from
evaluation/matrix.py), which this splits back into separate flags.

    python sweeps/run_variant.py pruning.prune "--flags=--strategy 2:4 --sparsity 0.5" --model=tiny-random
"""
import os
import shlex
import sys


def expand(args: list[str]) -> list[str]:
    out = []
    for a in args:
        out += shlex.split(a[len("--flags="):]) if a.startswith("--flags=") else [a]
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python sweeps/run_variant.py MODULE [--flags='--a 1 --b 2'] [OTHER FLAGS ...]")
    module, *rest = sys.argv[1:]
    os.execv(sys.executable, [sys.executable, "-m", module, *expand(rest)])
