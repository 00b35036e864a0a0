"""The run config: what argparse fills, what wandb logs and what results.json records."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass, field

DEFAULT_MODEL = "microsoft/BioGPT-Large-PubMedQA"
DATA_DIR_ENV = "PUBMEDQA_DATA_DIR"
TOKENIZER_DIR_ENV = "BIOGPT_TOKENIZER_DIR"


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit code 2."""


@dataclass
class RunConfig:
    technique: str = "baseline"
    variant: str = "fp32-eager"
    model: str = DEFAULT_MODEL
    tokenizer_dir: str | None = None
    data_dir: str | None = None
    limit: int | None = None
    batch_size: int = 16
    decode: str = "score"
    max_new_tokens: int = 16
    device: str = "auto"
    dtype: str = "float32"
    seed: int = 0
    output_dir: str = "results"
    run_name: str | None = None
    reference: str | None = None
    min_duration: float | None = None
    min_passes: int = 1
    wandb: str = "auto"
    wandb_project: str = "biogpt-pubmedqa"
    # Filled while running, recorded with the config.
    weights: str = "real"
    prompt_form: str | None = None
    command: str = field(default_factory=lambda: " ".join([os.path.basename(sys.executable)] + sys.argv))
    # The technique's own options (e.g. precision, sparsity), one flat dict.
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.limit is not None and self.limit <= 0:
            raise UsageError(f"--limit must be a positive integer, got {self.limit}")
        if self.batch_size <= 0:
            raise UsageError(f"--batch-size must be a positive integer, got {self.batch_size}")
        if self.max_new_tokens <= 0:
            raise UsageError(f"--max-new-tokens must be a positive integer, got {self.max_new_tokens}")
        if self.min_passes <= 0:
            raise UsageError(f"--min-passes must be a positive integer, got {self.min_passes}")
        if self.min_duration is not None and self.min_duration < 0:
            raise UsageError(f"--min-duration must be >= 0, got {self.min_duration}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def build_parser(description: str) -> argparse.ArgumentParser:
    """The options every script shares; a technique script adds only its own."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("shared evaluation options")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="hub id, local model directory, or preset: tiny-random | biogpt-large-random")
    g.add_argument("--tokenizer-dir", default=os.environ.get(TOKENIZER_DIR_ENV),
                   help=f"directory holding a fairseq dict.txt + bpecodes to build the tokenizer from "
                        f"(env {TOKENIZER_DIR_ENV}); default: the model's own tokenizer")
    g.add_argument("--data-dir", default=os.environ.get(DATA_DIR_ENV),
                   help=f"PubMedQA directory with ori_pqal.json + test_ground_truth.json (env {DATA_DIR_ENV}); "
                        "default: the Hugging Face Hub (bigbio/pubmed_qa)")
    g.add_argument("--limit", type=positive_int, default=None,
                   help="evaluate only the first N test PMIDs in ascending numeric order")
    g.add_argument("--batch-size", type=positive_int, default=16, help="questions per forward pass")
    g.add_argument("--decode", choices=["score", "generate"], default="score",
                   help="score: argmax over yes/no/maybe next-token logits; generate: greedy decoding + answer parsing")
    g.add_argument("--max-new-tokens", type=positive_int, default=16, help="generate mode: tokens to decode at most")
    g.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="auto: CUDA when present")
    g.add_argument("--seed", type=int, default=0, help="seed for random-weight presets and training")
    g.add_argument("--output-dir", default="results", help="results go to OUTPUT_DIR/RUN_NAME/")
    g.add_argument("--run-name", default=None, help="default: technique-variant-model-timestamp")
    g.add_argument("--reference", default=None,
                   help="an earlier run directory (or its results.json) to compare predictions with")
    g.add_argument("--min-duration", type=float, default=None,
                   help="timed phase lasts at least this many seconds (default: 10 on CUDA, 0 on CPU)")
    g.add_argument("--min-passes", type=positive_int, default=1, help="timed phase runs at least this many passes")
    g.add_argument("--wandb", choices=["auto", "online", "offline", "disabled"], default="auto",
                   help="auto: online when an API key or login exists, else offline")
    g.add_argument("--wandb-project", default="biogpt-pubmedqa", help="wandb project name")
    return p


_SHARED = {f.name for f in dataclasses.fields(RunConfig)}


def config_from_args(args: argparse.Namespace, technique: str, variant: str, dtype: str = "float32") -> RunConfig:
    """Shared options become fields; the technique's own options go to `options`."""
    values = vars(args)
    shared = {k: v for k, v in values.items() if k in _SHARED}
    options = {k: v for k, v in values.items() if k not in _SHARED}
    return RunConfig(technique=technique, variant=variant, dtype=dtype, options=options, **shared)


def run_main(main) -> None:
    """Run a script's main(); bad input ends it with one line on stderr and exit code 2."""
    try:
        main()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
