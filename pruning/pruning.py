"""`python pruning/pruning.py ...`: the pruning script (pruning/prune.py, also `python -m pruning.prune`).

Python puts a script's own folder first on sys.path, where this file would stand in for the `pruning` package:
the repository root goes there instead, so that `pruning` is the package again."""
import runpy
import sys
from pathlib import Path

if __name__ == "__main__":
    sys.path[0] = str(Path(__file__).resolve().parents[1])
    runpy.run_module("pruning.prune", run_name="__main__", alter_sys=True)
