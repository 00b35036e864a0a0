"""Shared PubMedQA evaluation harness for the BioGPT-Large optimization scripts."""
from .config import RunConfig, UsageError, build_parser, config_from_args, run_main
from .data import LABELS, Question, load_finetuning_data, load_test_questions, load_train_questions
from .harness import evaluate, evaluate_and_log, prepare
from .modeling import PRESETS, load_model, load_tokenizer, parameter_count, resolve_device, weight_bytes

__all__ = ["LABELS", "PRESETS", "Question", "RunConfig", "UsageError", "build_parser", "config_from_args",
           "evaluate", "evaluate_and_log", "load_finetuning_data", "load_model", "load_test_questions", "load_tokenizer",
           "load_train_questions", "parameter_count", "prepare", "resolve_device", "run_main", "weight_bytes"]
