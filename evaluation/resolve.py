"""Everything a run settles before loading any weights, once: the runner builds it, and apply, the harness and the
results read it instead of working it out again."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .answering import Prompts, encode_all, prompt_form, prompt_ids
from .config import RunConfig, UsageError
from .data import Question, load_test_questions
from .modeling import PRESETS, load_config, load_tokenizer
from .reference import Reference, load_reference

ARCHITECTURE = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings")


@dataclass(frozen=True)
class Resolved:
    device: torch.device
    run_dir: Path
    questions: list[Question]
    tokenizer: object
    identity: dict              # the model: name, weights (real|random), preset seed, architecture figures
    prompt_ids: list[int]       # BioGPT's learned soft-prompt ids between source and target, or [] (plain form)
    prompts: Prompts            # every question encoded and batched, as every pass runs them
    min_duration_s: float       # the timed phase's least length
    reference: Reference | None

    @property
    def weights(self) -> str:
        return self.identity["weights"]

    def record(self) -> dict:
        """results.json's "run" block."""
        return {"run_name": self.run_dir.name, "device": str(self.device), "weights": self.weights,
                "prompt_form": prompt_form(self.prompt_ids), "prompt_ids": self.prompt_ids,
                "questions": len(self.questions), "min_duration_s": self.min_duration_s}


def model_identity(cfg: RunConfig, config) -> dict:
    """Which model a run ran, from its config alone: what a --reference must share with it."""
    local = cfg.model not in PRESETS and Path(cfg.model).is_dir()
    return {"name": str(Path(cfg.model).resolve()) if local else cfg.model,
            "weights": getattr(config, "bench_weights", "real"),
            "seed": cfg.seed if cfg.model in PRESETS else None,
            "architecture": {k: getattr(config, k) for k in ARCHITECTURE}}


def resolve(cfg: RunConfig, device: torch.device, run_dir: Path) -> Resolved:
    """Questions, tokenizer, the model's architecture, prompts and batches, the --reference checked whole: all
    before the weights are loaded, so that bad input costs seconds."""
    questions = load_test_questions(cfg.data_dir, cfg.limit)
    if cfg.limit and len(questions) < cfg.limit:
        print(f"--limit {cfg.limit} is more than the {len(questions)} test questions: evaluating all "
              f"{len(questions)}")
    tokenizer = load_tokenizer(cfg.model, cfg.tokenizer_dir)
    config = load_config(cfg)
    if len(tokenizer) > config.vocab_size:  # more rows than ids is fine: BioGPT's learned prompt lives there
        raise UsageError(f"tokenizer has {len(tokenizer)} ids but the model only {config.vocab_size} embedding "
                         "rows: wrong --tokenizer-dir?")
    learned = prompt_ids(tokenizer, config, cfg.prompt)
    identity = model_identity(cfg, config)
    reference = load_reference(cfg.reference, [q.pmid for q in questions], identity, prompt_form(learned))
    prompts = encode_all(tokenizer, config, questions, cfg.decode, cfg.batch_size, learned, device,
                         cfg.max_new_tokens, cfg.options.batch_buckets())
    min_duration = cfg.min_duration if cfg.min_duration is not None else (10.0 if device.type == "cuda" else 0.0)
    return Resolved(device, run_dir, questions, tokenizer, identity, learned, prompts, min_duration, reference)
