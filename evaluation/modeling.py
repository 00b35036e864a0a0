"""Tokenizer and model loading: hub ids, local directories and random-weight presets."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from .config import RunConfig, UsageError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Random-weight presets. biogpt-large-random is the exact BioGPT-Large architecture.
PRESETS = {
    "tiny-random": dict(vocab_size=57717, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=256, max_position_embeddings=2048, layer_norm_eps=1e-12,
                        scale_embedding=True),
    # BioGPT (base) size with BioGPT-Large's vocabulary: a mid-size model for CPU measurements.
    "biogpt-base-random": dict(vocab_size=57717, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                               intermediate_size=4096, max_position_embeddings=1024, layer_norm_eps=1e-12,
                               scale_embedding=True),
    "biogpt-large-random": dict(vocab_size=57717, hidden_size=1600, num_hidden_layers=48, num_attention_heads=25,
                                intermediate_size=6400, max_position_embeddings=2048, layer_norm_eps=1e-12,
                                scale_embedding=True),
}
LEARNED_PROMPT = [f"learned{i}" for i in range(1, 10)]  # BioGPT's --learned-prompt 9


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for but CUDA is not available on this machine")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def fairseq_tokenizer_files(tokenizer_dir: str) -> Path:
    """Write BioGptTokenizer's vocab.json/merges.txt from fairseq dict.txt + bpecodes (cached by content)."""
    src = Path(tokenizer_dir)
    dict_path, codes_path = src / "dict.txt", src / "bpecodes"
    for path in (dict_path, codes_path):
        if not path.is_file():
            raise UsageError(f"tokenizer file missing: {path}")
    digest = hashlib.sha256(dict_path.read_bytes() + codes_path.read_bytes()).hexdigest()[:16]
    out = Path(tempfile.gettempdir()) / f"biogpt-tokenizer-{digest}"
    if (out / "merges.txt").is_file():
        return out
    # HF vocabulary: the four specials, then dict tokens in file order; "@@" marks a continuation.
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for n, line in enumerate(dict_path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.rsplit(" ", 1)
        if len(parts) != 2:
            raise UsageError(f"tokenizer file malformed: {dict_path}:{n}: expected 'TOKEN COUNT'")
        token = parts[0][:-2] if parts[0].endswith("@@") else parts[0] + "</w>"
        vocab.setdefault(token, len(vocab))
    merges = [" ".join(line.split()[:2]) for line in codes_path.read_text(encoding="utf-8").splitlines() if line]
    tmp = Path(tempfile.mkdtemp(dir=tempfile.gettempdir()))
    (tmp / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (tmp / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")
    try:
        os.replace(tmp, out)
    except OSError:  # another process won the race; use its copy
        pass
    return out


def load_tokenizer(model_name: str, tokenizer_dir: str | None):
    from transformers import AutoTokenizer, BioGptTokenizer

    if tokenizer_dir:
        files = fairseq_tokenizer_files(tokenizer_dir)
        return BioGptTokenizer(str(files / "vocab.json"), str(files / "merges.txt"))
    if model_name in PRESETS:
        raise UsageError(f"preset {model_name!r} has no tokenizer of its own: pass --tokenizer-dir "
                         "(a directory with BioGPT-Large's fairseq dict.txt + bpecodes)")
    try:
        return AutoTokenizer.from_pretrained(model_name)
    except OSError as e:
        raise UsageError(f"tokenizer for {model_name!r} not found locally or on the hub "
                         f"(offline?): {str(e).splitlines()[0]}")


def random_model(preset: str, seed: int, dtype: torch.dtype, device: torch.device, **overrides):
    """Seeded random weights of the preset's architecture (`overrides`: config fields changed, e.g. a cut
    num_hidden_layers for per-layer profiling), created directly on `device`."""
    from transformers import BioGptConfig, BioGptForCausalLM

    # bench_weights travels in config.json, so a saved and reloaded preset stays marked as random
    config = BioGptConfig(**{**PRESETS[preset], **overrides}, torch_dtype=dtype, bench_weights="random")
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        model = BioGptForCausalLM(config)
    return model.to(dtype).eval()


def load_pretrained(name: str, dtype: torch.dtype, device: torch.device, **kwargs):
    """A hub id or local directory; kwargs go to from_pretrained (e.g. quantization_config)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation="sdpa",
                                                     use_safetensors=None, **kwargs)
    except OSError as e:
        raise UsageError(f"model {name!r} not found locally or reachable on the hub "
                         f"(offline?): {str(e).splitlines()[0]}")
    if "quantization_config" not in kwargs:
        model = model.to(device)
    return model.eval()


def load_model(cfg: RunConfig, **kwargs):
    """(model, tokenizer) for cfg.model in cfg.dtype on cfg.device; records cfg.weights."""
    if cfg.dtype not in DTYPES:
        raise UsageError(f"unknown dtype {cfg.dtype!r}; choose from {', '.join(DTYPES)}")
    device = resolve_device(cfg.device)
    tokenizer = load_tokenizer(cfg.model, cfg.tokenizer_dir)
    looks_local = cfg.model.startswith((".", "/", "~")) or cfg.model.count("/") > 1
    if cfg.model not in PRESETS and looks_local and not Path(cfg.model).is_dir():
        raise UsageError(f"model directory not found: {cfg.model} "
                         f"(presets: {', '.join(PRESETS)})")
    if cfg.model in PRESETS:
        model = random_model(cfg.model, cfg.seed, DTYPES[cfg.dtype], device)
        cfg.weights = "random"
    elif "/" not in cfg.model and not Path(cfg.model).is_dir():
        raise UsageError(f"unknown preset or model {cfg.model!r}; presets: {', '.join(PRESETS)}, "
                         "or a hub id like microsoft/BioGPT-Large-PubMedQA, or a local directory")
    else:
        model = load_pretrained(cfg.model, DTYPES[cfg.dtype], device, **kwargs)
        cfg.weights = weights_kind(model)
    if len(tokenizer) != model.config.vocab_size:
        raise UsageError(f"tokenizer has {len(tokenizer)} ids but the model's vocabulary is "
                         f"{model.config.vocab_size}: wrong --tokenizer-dir?")
    return model, tokenizer


def weights_kind(model) -> str:
    """"random" for a preset's seeded weights (also after save and reload), else "real"."""
    return getattr(model.config, "bench_weights", "real")


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def parameter_count(model) -> int:
    """Parameters before any packing: a bitsandbytes 4-bit weight stores two per uint8 element."""
    return sum(p.quant_state.shape.numel() if getattr(p, "quant_state", None) is not None else p.numel()
               for p in model.parameters())


def weight_bytes(model) -> int:
    """Bytes of parameters and buffers as stored (tied weights counted once; packed quantized storage as is)."""
    seen = set()

    def nbytes(t) -> int:
        if hasattr(t, "__tensor_flatten__"):  # tensor subclasses (torchao): count their inner tensors
            names, _ = t.__tensor_flatten__()
            return sum(nbytes(getattr(t, n)) for n in names)
        if t.data_ptr() in seen:
            return 0
        seen.add(t.data_ptr())
        return t.numel() * t.element_size()
    return sum(nbytes(t) for t in list(model.parameters()) + list(model.buffers()))
