"""Tokenizer and model loading: hub ids, local directories and random-weight presets."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from .answering import answer_token_ids
from .config import RunConfig, UsageError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Random-weight presets with the real checkpoint's embedding shape: BioGPT-Large's 57,717-id vocabulary plus the 9
# learned soft-prompt rows fairseq appended (57,726), so offline runs take the learned-prompt path as the real model
# does. biogpt-large-random is the exact BioGPT-Large architecture.
PRESETS = {
    "tiny-random": dict(vocab_size=57726, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=256, max_position_embeddings=2048, layer_norm_eps=1e-12,
                        scale_embedding=True),
    # BioGPT (base) size with BioGPT-Large's vocabulary: a mid-size model for CPU measurements.
    "biogpt-base-random": dict(vocab_size=57726, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                               intermediate_size=4096, max_position_embeddings=1024, layer_norm_eps=1e-12,
                               scale_embedding=True),
    "biogpt-large-random": dict(vocab_size=57726, hidden_size=1600, num_hidden_layers=48, num_attention_heads=25,
                                intermediate_size=6400, max_position_embeddings=2048, layer_norm_eps=1e-12,
                                scale_embedding=True),
}


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
    """The run's tokenizer; one without yes/no/maybe as three single tokens is refused before any model loads.
    A bad model name is said first, whatever --tokenizer-dir is."""
    check_model_name(model_name)
    tokenizer = read_tokenizer(model_name, tokenizer_dir)
    answer_token_ids(tokenizer)
    return tokenizer


def read_tokenizer(model_name: str, tokenizer_dir: str | None):
    from transformers import AutoTokenizer, BioGptTokenizer

    if tokenizer_dir:
        files = fairseq_tokenizer_files(tokenizer_dir)
        return BioGptTokenizer(str(files / "vocab.json"), str(files / "merges.txt"))
    if model_name in PRESETS:
        raise UsageError(f"preset {model_name!r} has no tokenizer of its own: pass --tokenizer-dir "
                         "(a directory with BioGPT-Large's fairseq dict.txt + bpecodes)")
    local = Path(model_name)
    if local.is_dir() and not any((local / f).is_file() for f in ("tokenizer_config.json", "tokenizer.json")):
        raise UsageError(f"model directory {model_name} holds no tokenizer: pass --tokenizer-dir (a directory with "
                         "BioGPT-Large's fairseq dict.txt + bpecodes)")
    try:
        return AutoTokenizer.from_pretrained(model_name)
    except OSError as e:
        raise UsageError(f"tokenizer for {model_name!r} not found locally or on the hub "
                         f"(offline?): {str(e).splitlines()[0]}")


def preset_config(preset: str, **overrides):
    """A preset's architecture (`overrides`: config fields changed, e.g. a cut num_hidden_layers for per-layer
    profiling), marked as random weights: bench_weights travels in config.json, so a saved and reloaded preset stays
    marked as random."""
    from transformers import BioGptConfig

    return BioGptConfig(**{**PRESETS[preset], **overrides}, bench_weights="random")


def check_model_name(name: str) -> None:
    """A preset, an existing directory, or something shaped like a hub id (owner/name); refused otherwise."""
    looks_local = name.startswith((".", "/", "~")) or name.count("/") > 1
    if name not in PRESETS and looks_local and not Path(name).is_dir():
        raise UsageError(f"model directory not found: {name} (presets: {', '.join(PRESETS)})")
    if name not in PRESETS and "/" not in name and not Path(name).is_dir():
        raise UsageError(f"unknown preset or model {name!r}; presets: {', '.join(PRESETS)}, "
                         "or a hub id like microsoft/BioGPT-Large-PubMedQA, or a local directory")
    if name not in PRESETS and Path(name).is_dir() and not (Path(name) / "config.json").is_file():
        raise UsageError(f"model directory {name} holds no config.json: expected a directory written by "
                         "save_pretrained (or a --save-dir)")


def load_config(cfg: RunConfig):
    """The model's architecture without its weights: a preset's, or the config.json of a directory or hub id."""
    check_model_name(cfg.model)
    if cfg.model in PRESETS:
        return preset_config(cfg.model)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(cfg.model)
    except (OSError, ValueError) as e:
        raise UsageError(f"model {cfg.model!r} not found locally or reachable on the hub (offline?): "
                         f"{str(e).splitlines()[0]}")


def random_model(preset: str, seed: int, dtype: torch.dtype, device: torch.device, attn_implementation: str = "sdpa",
                 **overrides):
    """Seeded random weights of the preset's architecture (`overrides`: see preset_config), created directly on
    `device`."""
    from transformers import BioGptForCausalLM

    config = preset_config(preset, **overrides)
    config.dtype = dtype
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    with torch.device(device):
        model = BioGptForCausalLM(config)
    return model.to(dtype).eval()


def check_attention(attn_implementation: str, device: torch.device) -> None:
    """flash_attention_2 needs the flash-attn package and a CUDA GPU: refuse it before loading anything."""
    import importlib.util

    if attn_implementation != "flash_attention_2":
        return
    if device.type != "cuda":
        raise UsageError("--attn-implementation flash_attention_2 needs a CUDA GPU; this run is on the CPU")
    if importlib.util.find_spec("flash_attn") is None:
        raise UsageError("--attn-implementation flash_attention_2 needs the flash-attn package "
                         "(pip install flash-attn --no-build-isolation)")


def checkpoint_shapes(directory: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from the safetensors headers of a saved model (no weights read)."""
    from safetensors import safe_open

    shapes = {}
    for file in sorted(directory.glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            shapes.update({key: tuple(f.get_slice(key).get_shape()) for key in f.keys()})
    return shapes


def empty_model(directory: Path, attn_implementation: str):
    """The model its config.json describes, on the meta device (no memory, no initialisation)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(directory)
    except (OSError, ValueError) as e:
        raise UsageError(f"model directory {directory}: unreadable config.json ({str(e).splitlines()[0]})")
    config._attn_implementation = attn_implementation
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def shrunk_linears(model, shapes: dict[str, tuple[int, ...]], directory: Path) -> dict[str, tuple[int, int]]:
    """Decoder Linears stored smaller than the config describes (structured pruning removed heads or neurons:
    BioGPT derives q/k/v/out_proj from hidden_size), by name, with the stored weight shape. A checkpoint that
    differs from its config in any other way is refused."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    linears = {f"biogpt.layers.{name}.{part}": name for name in decoder_linears(model) for part in ("weight", "bias")}
    shrunk = {}
    for key, shape in shapes.items():
        if key not in expected or shape == expected[key]:
            continue
        if key not in linears or any(s > e for s, e in zip(shape, expected[key])):
            raise UsageError(f"model directory {directory}: {key} is stored as {list(shape)} but its config.json "
                             f"describes {list(expected[key])}")
        if key.endswith(".weight"):
            shrunk[linears[key]] = shape
    return shrunk


def load_shrunk(model, directory: Path, shrunk: dict[str, tuple[int, int]], dtype: torch.dtype,
                device: torch.device):
    """A structurally pruned model into `model` (empty_model): each shrunk decoder Linear rebuilt at its stored
    shape (and each attention's head count from its q_proj), then the stored weights put in place."""
    from safetensors.torch import load_file

    for name, (rows, cols) in shrunk.items():
        parent, child = name.rsplit(".", 1)
        old = getattr(model.biogpt.layers.get_submodule(parent), child)
        setattr(model.biogpt.layers.get_submodule(parent), child,
                torch.nn.Linear(cols, rows, bias=old.bias is not None, device="meta"))
    for layer in model.biogpt.layers:
        layer.self_attn.num_heads = layer.self_attn.q_proj.out_features // layer.self_attn.head_dim
    state = {}
    for file in sorted(directory.glob("*.safetensors")):
        state.update(load_file(str(file)))
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if unexpected or set(missing) - set(model._tied_weights_keys or {}):
        raise UsageError(f"model directory {directory} does not hold its model: missing {sorted(missing)[:3]}, "
                         f"unexpected {sorted(unexpected)[:3]}")
    model.tie_weights()
    return model.to(dtype=dtype, device=device).eval()


def load_pretrained(name: str, dtype: torch.dtype, device: torch.device, attn_implementation: str = "sdpa",
                    **kwargs):
    """A hub id or local directory; kwargs go to from_pretrained (e.g. quantization_config). A local directory
    of a structurally pruned model loads at its stored shapes."""
    from transformers import AutoModelForCausalLM

    directory = Path(name)
    if directory.is_dir():
        model = empty_model(directory, attn_implementation)
        shrunk = shrunk_linears(model, checkpoint_shapes(directory), directory)
        if shrunk and kwargs:
            raise UsageError(f"model directory {name} holds a structurally pruned model ({len(shrunk)} decoder "
                             "Linears smaller than its config): it loads unquantized only")
        if shrunk:
            return load_shrunk(model, directory, shrunk, dtype, device)
    try:
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, attn_implementation=attn_implementation,
                                                     use_safetensors=None, **kwargs)
    except OSError as e:
        raise UsageError(f"model {name!r} not found locally or reachable on the hub "
                         f"(offline?): {str(e).splitlines()[0]}")
    if "quantization_config" not in kwargs:
        model = model.to(device)
    return model.eval()


def load_model(cfg: RunConfig, device: torch.device, dtype: str | None = None, **kwargs):
    """cfg.model's weights in `dtype` (default: the run's) on `device`; kwargs go to from_pretrained. The name was
    checked and the tokenizer loaded already (evaluation.resolve)."""
    dtype = dtype or cfg.dtype
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    if cfg.model in PRESETS:
        return random_model(cfg.model, cfg.seed, DTYPES[dtype], device, cfg.attn_implementation)
    return load_pretrained(cfg.model, DTYPES[dtype], device, cfg.attn_implementation, **kwargs)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def parameter_count(model) -> int:
    """Parameters before any packing: a bitsandbytes 4-bit weight stores two per uint8 element; torch.ao's
    dynamic int8 Linears hold theirs in packed params, not parameters."""
    packed = sum(m.in_features * m.out_features + m.out_features for m in decoder_linears(model).values()
                 if callable(getattr(m, "weight", None)))
    return packed + sum(p.quant_state.shape.numel() if getattr(p, "quant_state", None) is not None else p.numel()
                        for p in model.parameters())


def decoder_linears(model) -> dict[str, torch.nn.Module]:
    """Every Linear of the decoder layers by name ("0.self_attn.q_proj", "0.fc1", ...), whatever it became:
    nn.Linear (torchao tensor-subclass weights included), bitsandbytes or torch.ao quantized Linears."""
    return {n: m for n, m in model.biogpt.layers.named_modules() if hasattr(m, "in_features") and n}


def is_converted(module) -> bool:
    """A decoder Linear that a quantization or low-precision scheme replaced: another class than nn.Linear
    (bitsandbytes, torch.ao), or a quantized tensor-subclass weight (torchao)."""
    if type(module) is not torch.nn.Linear:
        return True
    return hasattr(module.weight, "__tensor_flatten__")


def linear_conversion(model) -> dict:
    """How many decoder Linears a scheme converted, out of how many, and what they became."""
    linears = decoder_linears(model)
    kinds: dict[str, int] = {}
    for m in linears.values():
        w = m.weight() if callable(m.weight) else m.weight  # torch.ao dynamic Linear: weight() unpacks
        key = f"{type(m).__module__}.{type(m).__name__} / {type(w).__name__}"
        kinds[key] = kinds.get(key, 0) + 1
    return {"decoder_linears": len(linears), "converted": sum(map(is_converted, linears.values())), "kinds": kinds}


def require_all_converted(model, scheme: str) -> dict:
    """The conversion record; a scheme that left any decoder Linear unconverted is refused, not reported."""
    record = linear_conversion(model)
    if record["converted"] != record["decoder_linears"]:
        raise UsageError(f"{scheme} converted only {record['converted']} of {record['decoder_linears']} decoder "
                         f"Linears (the rest stayed {', '.join(k for k in record['kinds'] if '.Linear /' in k)}); "
                         "pick options every layer supports")
    return record


def _tensor_bytes(t, seen: set) -> int:
    if hasattr(t, "__tensor_flatten__"):  # tensor subclasses (torchao, bitsandbytes params): their inner tensors
        names, _ = t.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(t, n), seen) for n in names)
    if not isinstance(t, torch.Tensor) or t.data_ptr() in seen:
        return 0
    seen.add(t.data_ptr())
    if t.is_quantized:  # torch.ao packed weight: int8 values plus per-channel scales and zero points
        extra = (t.q_per_channel_scales().nbytes + t.q_per_channel_zero_points().nbytes
                 if t.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric) else 8)
        return t.int_repr().nbytes + extra
    return t.numel() * t.element_size()


def footprint_bytes(model) -> int:
    """The model's stored bytes, counted once per storage: parameters and buffers (tensor subclasses by their
    inner tensors), bitsandbytes quantization state held beside the weights (absmax, codebooks, int8 row
    scales) and torch.ao's packed int8 weights with their scales and biases."""
    seen: set = set()
    tensors = list(model.parameters()) + list(model.buffers())
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        if state is not None:
            tensors += [state.absmax, state.code] + ([state.state2.absmax, state.state2.code] if state.nested else [])
        tensors.append(getattr(p, "SCB", None))
    for m in decoder_linears(model).values():
        if callable(getattr(m, "weight", None)) and hasattr(m, "_weight_bias"):  # torch.ao dynamic quantized Linear
            tensors += list(m._weight_bias())
    return sum(_tensor_bytes(t, seen) for t in tensors if t is not None)
