"""Shared PubMedQA evaluation harness for the BioGPT-Large optimization scripts."""
from .config import quiet_ctrl_c_while_starting

quiet_ctrl_c_while_starting()  # first, before torch and transformers take their seconds to import

from .config import DtypeOptions, Options, RunConfig, UsageError, option, parse_config, quiet_third_party, run_main
from .data import LABELS, Question, load_finetuning_data, load_test_questions
from .harness import evaluate
from .modeling import (PRESETS, decoder_linears, footprint_bytes, linear_conversion, load_model, load_tokenizer,
                       parameter_count, require_all_converted, resolve_device)
from .runner import Applied, main, run

__all__ = ["LABELS", "PRESETS", "Applied", "DtypeOptions", "Options", "Question", "RunConfig", "UsageError", "decoder_linears",
           "evaluate", "footprint_bytes", "linear_conversion", "load_finetuning_data", "load_model",
           "load_test_questions", "load_tokenizer", "main", "option", "parameter_count",
           "parse_config", "require_all_converted", "resolve_device", "run", "run_main"]

quiet_third_party()  # on import: transformers imports torchao lazily, when a model is first loaded
