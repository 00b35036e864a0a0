"""python -m evaluation.report [RESULTS_DIR ...]: bad input is one line and exit code 2."""
from ..config import run_main
from . import main

run_main(main)
