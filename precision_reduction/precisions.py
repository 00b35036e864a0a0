"""Loading BioGPT at one precision: 16-bit casts, bitsandbytes int8/NF4/FP4, torchao float8."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from evaluation import PRESETS, UsageError, load_model, resolve_device
from evaluation.modeling import DTYPES, random_model

PRECISIONS = ["float32", "float16", "bfloat16", "int8", "int4", "float4", "fp8"]
BNB_4BIT_TYPES = {"int4": "nf4", "float4": "fp4"}


def bnb_config(precision: str, compute_dtype: str, int8_threshold: float, double_quant: bool):
    """The BitsAndBytesConfig for int8 (LLM.int8), int4 (NF4) or float4 (FP4)."""
    from transformers import BitsAndBytesConfig

    if precision == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=int8_threshold)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=BNB_4BIT_TYPES[precision],
                              bnb_4bit_compute_dtype=DTYPES[compute_dtype],
                              bnb_4bit_use_double_quant=double_quant)


def saved_preset(name: str, seed: int) -> Path:
    """The seeded random preset written once as float32 safetensors (cached by architecture, seed, versions),
    so quantized loading goes through from_pretrained exactly as for a real checkpoint."""
    import transformers

    key = json.dumps([PRESETS[name], seed, torch.__version__, transformers.__version__], sort_keys=True)
    out = Path(tempfile.gettempdir()) / f"biogpt-preset-{name}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if (out / "config.json").is_file():
        return out
    model = random_model(name, seed, torch.float32, torch.device("cpu"))
    tmp = Path(tempfile.mkdtemp(dir=out.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    del model
    try:
        os.replace(tmp, out)
    except OSError:  # another process wrote it first; use that copy
        pass
    return out


def load_bnb(cfg, quantization_config):
    """(model, tokenizer) with bitsandbytes layers; embeddings, layer norms and the LM head stay in cfg.dtype."""
    device = resolve_device(cfg.device)
    source = cfg
    if cfg.model in PRESETS:
        source = dataclasses.replace(cfg, model=str(saved_preset(cfg.model, cfg.seed)))
    model, tokenizer = load_model(source, quantization_config=quantization_config,
                                  device_map={"": str(device)})
    cfg.weights = "random" if cfg.model in PRESETS else source.weights
    return model, tokenizer


def check_fp8_device(device_name: str) -> None:
    """float8 matmuls (torch._scaled_mm) need CUDA compute capability 8.9+ (Ada, Hopper or newer)."""
    device = resolve_device(device_name)
    if device.type != "cuda":
        raise UsageError("--precision fp8 needs a CUDA GPU with compute capability >= 8.9 (Ada/Hopper); "
                         "this run's device is the CPU")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise UsageError(f"--precision fp8 needs compute capability >= 8.9 (Ada/Hopper); "
                         f"{torch.cuda.get_device_name(device)} is {major}.{minor}")


def to_fp8(model) -> str:
    """torchao: float8 e4m3 weights and dynamically scaled float8 activations, in place; returns the scale
    granularity (per row for bfloat16 models, which torchao requires for it; per tensor for float16).
    The LM head (tied to the embeddings) stays in 16-bit like the bitsandbytes modes."""
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, PerTensor, quantize_

    per_row = next(model.parameters()).dtype == torch.bfloat16
    quantize_(model, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow() if per_row else PerTensor()),
              filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear) and fqn != "output_projection")
    return "per_row" if per_row else "per_tensor"


def quant_state_bytes(model) -> int:
    """Bytes of bitsandbytes quantization state held beside the weights (absmax, codebooks, int8 row scales),
    which are attributes rather than parameters or buffers."""
    total, seen = 0, set()

    def add(t):
        nonlocal total
        if isinstance(t, torch.Tensor) and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()

    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        if state is not None:
            add(state.absmax)
            add(state.code)
            if state.nested:
                add(state.state2.absmax)
                add(state.state2.code)
        add(getattr(p, "SCB", None))
    return total
