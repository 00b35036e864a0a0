"""wandb agent entry point: run a technique script with the sweep's flags, expanding a combined `--flags=...`.

A grid sweep can't say "these two values only together" (2:4 pruning only at sparsity 0.5; a torch.compile mode
only with inductor), so each sweep lists such pairs as one parameter, `flags` ("--strategy=2:4 --sparsity=0.5"),
which this splits back into separate flags. The repo root goes on PYTHONPATH so the scripts find `evaluation`.

    python sweeps/run_variant.py pruning/pruning.py "--flags=--strategy=2:4 --sparsity=0.5" --finetune-steps=0
"""
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def expand(args: list[str]) -> list[str]:
    out = []
    for a in args:
        out += shlex.split(a[len("--flags="):]) if a.startswith("--flags=") else [a]
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python sweeps/run_variant.py SCRIPT [--flags='--a=1 --b=2'] [OTHER FLAGS ...]")
    program, *rest = sys.argv[1:]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    os.execve(sys.executable, [sys.executable, program, *expand(rest)], env)
