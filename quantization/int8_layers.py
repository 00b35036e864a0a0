"""Quantizing BioGPT's decoder Linears: the torchao / torch.ao configs and what ran, shared by the two scripts."""
from __future__ import annotations

import torch

from evaluation import UsageError

PTQ_SCHEMES = ("dynamic-int8", "weight-only-int8", "weight-only-int4")
DYNAMIC_CPU_BACKENDS = ("torch-ao", "torchao")  # the first is the CPU default


def is_decoder_linear(module: torch.nn.Module, fqn: str) -> bool:
    """Every Linear in the decoder layers; the LM head stays float (it is tied to the token embedding)."""
    return isinstance(module, torch.nn.Linear) and fqn.startswith("biogpt.layers.")


def ptq_config(scheme: str, device: torch.device, group_size: int):
    """The torchao config for a scheme on a device (torch-ao dynamic quantization is applied apart)."""
    from torchao.quantization import Int4WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig

    if scheme == "dynamic-int8":
        return Int8DynamicActivationInt8WeightConfig()  # per-token int8 activations, per-row int8 weights
    if scheme == "weight-only-int8":
        return Int8WeightOnlyConfig()
    if scheme == "weight-only-int4":
        if device.type != "cuda":
            raise UsageError(f"--scheme weight-only-int4 is not supported on {device.type}: torchao 0.18's int4 "
                             "weight-only kernels (tinygemm, mslk) need CUDA; use --device cuda or another scheme")
        # tinygemm's tile-packed layout: the CUDA int4 kernel torchao ships without extra packages (bf16 only)
        return Int4WeightOnlyConfig(group_size=group_size, int4_packing_format="tile_packed_to_4d")
    raise UsageError(f"unknown --scheme {scheme!r}; choose from {', '.join(PTQ_SCHEMES)}")


def quantize_decoder(model, scheme: str, device: torch.device, group_size: int = 128,
                     cpu_backend: str = "torch-ao") -> None:
    """Quantize every decoder Linear in place: torch.ao dynamic quantization, or torchao's quantize_."""
    from torchao.quantization import quantize_

    if scheme == "dynamic-int8" and device.type == "cpu" and cpu_backend == "torch-ao":
        # per output channel weight scales, like torchao's per-row (the default qconfig is per tensor)
        torch.ao.quantization.quantize_dynamic(
            model.biogpt.layers, {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
            dtype=torch.qint8, inplace=True)
        return
    quantize_(model, ptq_config(scheme, device, group_size), filter_fn=is_decoder_linear)


def decoder_linears(model) -> list[tuple[str, torch.nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if n.startswith("biogpt.layers.") and hasattr(m, "in_features")]


def kernel_path(model) -> dict:
    """What the decoder Linears are now: module class, weight tensor class and the storage dtypes behind it."""
    kinds = {}
    for _, m in decoder_linears(model):
        w = m.weight() if callable(m.weight) else m.weight  # torch.ao dynamic Linear: weight() unpacks
        cls = type(m)
        storage = ({n: str(getattr(w, n).dtype) for n in w.__tensor_flatten__()[0]}
                   if hasattr(w, "__tensor_flatten__") else {"weight": str(w.dtype)})
        key = (f"{cls.__module__}.{cls.__name__}", type(w).__name__, str(sorted(storage.items())))
        kinds.setdefault(key, {"module": key[0], "weight_tensor": key[1], "storage": storage, "count": 0})
        kinds[key]["count"] += 1
    return {"decoder_linears": list(kinds.values()), "quantized_engine": torch.backends.quantized.engine}


def packed_weight_bytes(model) -> int:
    """Bytes of torch.ao's packed int8 weights, their scales and float biases, which weight_bytes() does not see
    (they live in a packed-params object, not in a parameter or buffer); 0 for torchao models."""
    total = 0
    for _, m in decoder_linears(model):
        if callable(m.weight):
            w, b = m._weight_bias()
            total += w.int_repr().nbytes + (b.nbytes if b is not None else 0)
            if w.qscheme() == torch.per_channel_affine:
                total += w.q_per_channel_scales().nbytes + w.q_per_channel_zero_points().nbytes
    return total
