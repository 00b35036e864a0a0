"""Loading BioGPT at one precision: 16-bit casts, bitsandbytes int8/NF4/FP4, torchao float8."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from evaluation import PRESETS, UsageError, load_model
from evaluation.modeling import DTYPES, random_model

FLOAT_PRECISIONS = ("float32", "float16", "bfloat16")
BNB_TYPES = {"int8": "llm.int8", "int4": "nf4", "float4": "fp4"}
PRECISIONS = [*FLOAT_PRECISIONS, *BNB_TYPES, "fp8"]


def bnb_config(opts):
    """The BitsAndBytesConfig for int8 (LLM.int8), int4 (NF4) or float4 (FP4)."""
    from transformers import BitsAndBytesConfig

    if opts.precision == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=opts.int8_threshold)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=BNB_TYPES[opts.precision],
                              bnb_4bit_compute_dtype=DTYPES[opts.compute_dtype],
                              bnb_4bit_use_double_quant=opts.double_quant)


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


def load_bnb(cfg, device):
    """The model with bitsandbytes layers, loaded through from_pretrained as a real checkpoint would be (a preset
    is saved once first); embeddings, layer norms and the LM head stay in the compute dtype."""
    source = cfg.model if cfg.model not in PRESETS else str(saved_preset(cfg.model, cfg.seed))
    return load_model(dataclasses.replace(cfg, model=source), device, quantization_config=bnb_config(cfg.options),
                      device_map={"": str(device)})


def check_fp8_device(device) -> None:
    """float8 matmuls (torch._scaled_mm) need CUDA compute capability 8.9+ (Ada, Hopper or newer)."""
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
