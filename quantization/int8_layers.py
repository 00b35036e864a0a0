"""Quantizing BioGPT's decoder Linears with torchao or torch.ao; shared by the PTQ and QAT scripts."""
from __future__ import annotations

import torch

PTQ_SCHEMES = ("dynamic-int8", "weight-only-int8", "weight-only-int4")
DYNAMIC_CPU_BACKENDS = ("torch-ao", "torchao")  # the first is the CPU default
INT4_GROUP_SIZES = [32, 64, 128, 256]


def is_decoder_linear(module: torch.nn.Module, fqn: str) -> bool:
    """Every Linear in the decoder layers; the LM head stays float (it is tied to the token embedding)."""
    return isinstance(module, torch.nn.Linear) and fqn.startswith("biogpt.layers.")


def ptq_config(scheme: str, group_size: int | None):
    """The torchao config of a scheme (torch.ao dynamic quantization is applied apart)."""
    from torchao.quantization import Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    if scheme == "dynamic-int8":
        return Int8DynamicActivationInt8WeightConfig()  # per-token int8 activations, per-row int8 weights
    if scheme == "weight-only-int8":
        return Int8WeightOnlyConfig()
    # tinygemm's tile-packed layout: the CUDA int4 kernel torchao ships without extra packages (bf16 only)
    return Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d")


def quantize_decoder(model, scheme: str, device: torch.device, group_size: int | None = None,
                     cpu_backend: str = "torch-ao") -> str:
    """Quantize every decoder Linear in place; returns the backend that did it (torch-ao or torchao)."""
    if scheme == "dynamic-int8" and device.type == "cpu" and cpu_backend == "torch-ao":
        # per output channel weight scales, like torchao's per-row (the default qconfig is per tensor)
        torch.ao.quantization.quantize_dynamic(
            model.biogpt.layers, {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
            dtype=torch.qint8, inplace=True)
        return "torch-ao"
    from torchao.quantization import quantize_

    quantize_(model, ptq_config(scheme, group_size), filter_fn=is_decoder_linear)
    return "torchao"
