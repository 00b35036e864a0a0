"""Pruning of BioGPT's decoder Linear layers: unstructured, block, 2:4 (masks via torch.nn.utils.prune) and
structured (FFN neurons / attention heads removed, so the matrices shrink). Embeddings, layer norms and the LM head
are never touched."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from evaluation import UsageError, decoder_linears

# module name suffix -> layer type in the records
LAYER_TYPES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "out", "fc1": "fc1", "fc2": "fc2"}


def layer_type(name: str) -> str:
    return LAYER_TYPES[name.rsplit(".", 1)[-1]]


def weight_counts(model) -> dict[str, int]:
    """Weight elements per layer type (taken before pruning: structured pruning shrinks them)."""
    counts = dict.fromkeys(LAYER_TYPES.values(), 0)
    for name, m in decoder_linears(model).items():
        counts[layer_type(name)] += m.weight.numel()
    return counts


def measure_sparsity(model, original: dict[str, int]) -> dict:
    """Fraction of the original decoder Linear weights that are now zero or removed: overall and per layer type."""
    nonzero = dict.fromkeys(LAYER_TYPES.values(), 0)
    for name, m in decoder_linears(model).items():
        nonzero[layer_type(name)] += int(torch.count_nonzero(m.weight.detach()))
    total = sum(original.values())
    return {"sparsity_measured": 1 - sum(nonzero.values()) / total,
            "sparsity_by_type": {t: 1 - nonzero[t] / original[t] for t in original},
            "decoder_linear_weights_original": total, "decoder_linear_weights_nonzero": sum(nonzero.values())}


# --- masks kept as forward pre-hooks (torch.nn.utils.prune): fine-tuning keeps them fixed -------------------------

def prune_unstructured(model, sparsity: float, scope: str):
    """L1 magnitude pruning: one threshold over all decoder weights (global) or `sparsity` of each matrix (layer)."""
    linears = list(decoder_linears(model).values())
    if scope == "global":
        prune.global_unstructured([(m, "weight") for m in linears], pruning_method=prune.L1Unstructured,
                                  amount=sparsity)
    else:
        for m in linears:
            prune.l1_unstructured(m, "weight", amount=sparsity)


def block_norms(weight: torch.Tensor, block: int) -> torch.Tensor:
    """L2 norm of each block x block tile: [rows / block, cols / block]."""
    rows, cols = weight.shape
    tiles = weight.detach().float().reshape(rows // block, block, cols // block, block)
    return tiles.pow(2).sum(dim=(1, 3)).sqrt()


def keep_all_but_lowest(scores: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    """Boolean keep-masks shaped like `scores`, False at the `count` lowest scores taken together."""
    flat = torch.cat([s.flatten() for s in scores])
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[flat.argsort()[:count]] = False
    return list(keep.split([s.numel() for s in scores]))


def prune_block(model, sparsity: float, block: int, scope: str):
    """Zero the lowest-norm block x block tiles: across all decoder matrices (global) or within each (layer)."""
    linears = list(decoder_linears(model).items())
    for name, m in linears:
        if m.weight.shape[0] % block or m.weight.shape[1] % block:
            raise UsageError(f"--block-size {block} does not divide {name}.weight of shape {tuple(m.weight.shape)}")
    scores = [block_norms(m.weight, block) for _, m in linears]
    if scope == "global":
        keeps = keep_all_but_lowest(scores, round(sparsity * sum(s.numel() for s in scores)))
    else:
        keeps = [keep_all_but_lowest([s], round(sparsity * s.numel()))[0] for s in scores]
    for (_, m), score, keep in zip(linears, scores, keeps):
        tiles = keep.reshape(score.shape).repeat_interleave(block, 0).repeat_interleave(block, 1)
        prune.custom_from_mask(m, "weight", tiles.to(m.weight.device))


def two_four_mask(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest-magnitude weights of every 4 consecutive ones along the input dimension."""
    rows, cols = weight.shape
    groups = weight.detach().abs().reshape(rows, cols // 4, 4)
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return mask.reshape(rows, cols)


def prune_two_four(model):
    for name, m in decoder_linears(model).items():
        if m.weight.shape[1] % 4:
            raise UsageError(f"2:4 needs an input dimension divisible by 4; {name}.weight is {tuple(m.weight.shape)}")
        prune.custom_from_mask(m, "weight", two_four_mask(m.weight))


def make_permanent(model):
    """Fold every mask into its weight (prune.remove): plain Linear modules again, zeros in place."""
    for m in decoder_linears(model).values():
        if prune.is_pruned(m):
            prune.remove(m, "weight")


# --- structured: remove neurons and heads, the matrices shrink ---------------------------------------------------

def sliced_linear(old: nn.Linear, rows=None, cols=None) -> nn.Linear:
    """A new Linear holding the chosen output rows / input columns of `old`."""
    weight = old.weight.detach()
    weight = weight[rows] if rows is not None else weight
    weight = weight[:, cols] if cols is not None else weight
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=old.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if old.bias is not None:
            new.bias.copy_(old.bias[rows] if rows is not None else old.bias)
    return new


def prune_ffn_neurons(layer, sparsity: float) -> int:
    """Drop `sparsity` of the FFN neurons (fc1 rows + bias, fc2 columns), lowest fc1-row L2 norm first; the same
    count in every layer, so config.intermediate_size describes the result. Returns the neurons kept."""
    prune.ln_structured(layer.fc1, "weight", amount=sparsity, n=2, dim=0)  # the library picks the rows
    keep = layer.fc1.weight_mask.any(dim=1).nonzero().flatten()
    prune.remove(layer.fc1, "weight")
    layer.fc1, layer.fc2 = sliced_linear(layer.fc1, rows=keep), sliced_linear(layer.fc2, cols=keep)
    return len(keep)


def prune_attention_heads(attn, fraction: float) -> int:
    """Drop `fraction` of the heads (q/k/v rows, out_proj columns), lowest joint L2 norm first. Returns heads kept."""
    d = attn.head_dim
    heads = attn.q_proj.weight.shape[0] // d
    score = sum(p.detach().float().reshape(heads, -1).pow(2).sum(1)
                for p in (attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight))
    score = score + attn.out_proj.weight.detach().float().reshape(-1, heads, d).pow(2).sum((0, 2))
    kept = score.topk(heads - round(fraction * heads)).indices.sort().values
    rows = (kept[:, None] * d + torch.arange(d, device=kept.device)).flatten()
    attn.q_proj, attn.k_proj, attn.v_proj = (sliced_linear(m, rows=rows)
                                             for m in (attn.q_proj, attn.k_proj, attn.v_proj))
    attn.out_proj = sliced_linear(attn.out_proj, cols=rows)
    attn.num_heads = len(kept)  # forward reshapes with head_dim, which is unchanged
    return len(kept)


def prune_structured(model, sparsity: float, heads_fraction: float) -> dict:
    neurons = [prune_ffn_neurons(layer, sparsity) for layer in model.biogpt.layers]
    model.config.intermediate_size = neurons[0]  # plain from_pretrained rebuilds these shapes
    heads = [model.config.num_attention_heads] * len(neurons)
    if heads_fraction > 0:
        heads = [prune_attention_heads(layer.self_attn, heads_fraction) for layer in model.biogpt.layers]
    model.config.pruned_attention_heads_kept = heads  # recorded in config.json; load_pruned() rebuilds from shapes
    return {"ffn_neurons_per_layer": neurons[0], "attention_heads_per_layer": heads[0]}


def load_pruned(path: str, dtype=torch.float32, device="cpu"):
    """Reload a saved pruned model, as `--model DIR` does: with heads removed q/k/v/out_proj no longer match the
    config, so the shared loader rebuilds each decoder Linear at the shape stored on disk."""
    from evaluation.modeling import load_pretrained

    return load_pretrained(path, dtype, torch.device(device))


# --- 2:4 on sparse tensor cores ----------------------------------------------------------------------------------

def to_semi_structured(model) -> tuple[bool, str]:
    """Swap each (already 2:4-pruned) decoder weight for torch's semi-structured sparse tensor where the hardware
    and dtype allow it. Returns (ran on sparse kernels, why / which backend)."""
    weight = next(model.parameters())
    if weight.device.type != "cuda":
        return False, "CPU run: semi-structured sparse kernels need a CUDA GPU (Ampere/Hopper); 2:4 weights run dense"
    major, minor = torch.cuda.get_device_capability(weight.device)
    if major < 8:
        return False, f"GPU compute capability {major}.{minor} < 8.0: no sparse tensor cores; 2:4 weights run dense"
    if weight.dtype not in (torch.float16, torch.bfloat16):
        return False, f"dtype {weight.dtype}: sparse tensor cores need float16/bfloat16; 2:4 weights run dense"
    from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

    if not torch.backends.cusparselt.is_available():
        SparseSemiStructuredTensor._FORCE_CUTLASS = True
    linears = decoder_linears(model).values()
    try:
        packed = [to_sparse_semi_structured(m.weight.detach().contiguous()) for m in linears]
    except RuntimeError as e:  # shape/dtype the kernels refuse: stay dense, say why
        return False, f"to_sparse_semi_structured refused: {str(e).splitlines()[0]}"
    for m, w in zip(linears, packed):
        m.weight = nn.Parameter(w, requires_grad=False)
    return True, f"torch.sparse semi-structured ({packed[0].BACKEND})"
