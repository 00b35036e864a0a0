"""The baseline as the matrix runs it: first, and every other variant's reference."""
from baseline.baseline import BaselineOptions
from evaluation.matrix import Variant

VARIANTS = [Variant("baseline", BaselineOptions, suites=("cpu",))]
