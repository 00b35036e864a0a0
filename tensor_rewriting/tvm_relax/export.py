"""torch.export -> Relax: the frontend converters that keep the model's dtype, the export itself, and the check that
no batch holds an index Relax's unchecked lookups would read out of bounds.

The torch.export route, not TVM's dynamo backend: with TVM 0.27 the dynamo route fails on BioGPT's embedding op.
The weights stay Relax function inputs, handed over from PyTorch by DLPack (no copy of a 6 GB model)."""
from __future__ import annotations

import torch
import tvm
from tvm import relax
from tvm.relax.frontend.torch import from_exported_program

from evaluation import UsageError


# TVM 0.27's PyTorch frontend gives every matmul (mm, bmm, matmul, addmm) a float32 result, whatever the input
# dtype: in a float16/bfloat16 model the next op then mixes float32 with half tensors, a Relax type error (and
# float32 activations leaking into a half-precision graph). PyTorch accumulates in float32 and rounds the result
# once to the input dtype; these converters do the same, so the Relax graph keeps the model's dtype.
def matmul_rounded_once(node, importer):
    x, y = (importer.env[a] for a in node.args[:2])
    emit = importer.block_builder.emit
    out = emit(relax.op.matmul(x, y, out_dtype="float32"))
    return emit(relax.op.astype(out, x.ty.dtype)) if x.ty.dtype != "float32" else out


def addmm_rounded_once(node, importer):
    """addmm (nn.Linear): float32 accumulation and bias add, then one rounding to the input dtype."""
    if node.kwargs.get("alpha", 1) != 1 or node.kwargs.get("beta", 1) != 1:
        return importer._addmm(node)
    bias, x, weight = (importer.env[a] for a in node.args[:3])
    emit = importer.block_builder.emit
    out = emit(relax.op.matmul(x, weight, out_dtype="float32"))
    out = emit(relax.op.add(out, emit(relax.op.astype(bias, "float32"))))
    return emit(relax.op.astype(out, x.ty.dtype)) if x.ty.dtype != "float32" else out


def layer_norm_in_float32(node, importer):
    """bfloat16 layer norm computed in float32 (Relax's layer_norm takes float32/float16 only), as PyTorch does."""
    x = importer.env[node.args[0]]
    if x.ty.dtype != "bfloat16" or len(node.args) < 4:
        return (importer._native_layer_norm if "native" in str(node.target) else importer._layer_norm)(node)
    emit = importer.block_builder.emit
    gamma, beta = (emit(relax.op.astype(importer.env[a], "float32")) for a in node.args[2:4])
    eps = node.args[4] if len(node.args) > 4 else 1e-5
    axes = list(range(-len(node.args[1]), 0))
    out = emit(relax.op.nn.layer_norm(emit(relax.op.astype(x, "float32")), gamma, beta, axes, eps))
    return emit(relax.op.astype(out, "bfloat16"))


def embedding_clipped(node, importer):
    """An embedding lookup as take(mode="clip"). The frontend's take(mode="fast") makes TVM print a warning for every
    lookup at every build; check_indices refuses out-of-range ids before any call, so clipping changes nothing."""
    weight, indices = (importer.env[a] for a in node.args[:2])
    return importer.block_builder.emit(relax.op.take(weight, indices, axis=0, mode="clip"))


CONVERTERS = {"embedding.default": embedding_clipped,
              "layer_norm.default": layer_norm_in_float32, "native_layer_norm.default": layer_norm_in_float32,
              "addmm.default": addmm_rounded_once, "mm.default": matmul_rounded_once,
              "bmm.default": matmul_rounded_once, "matmul.default": matmul_rounded_once}


def export_relax(module: torch.nn.Module, example: tuple) -> tuple[tvm.IRModule, list[torch.Tensor]]:
    """(Relax module whose main takes the inputs then the weights, the weights in that order)."""
    with torch.no_grad():
        program = torch.export.export(module, example)
    mod = from_exported_program(program, keep_params_as_input=True,
                                custom_convert_map=CONVERTERS)
    mod, _ = relax.frontend.detach_params(mod)
    # Bind by name, not by position: the Relax inputs follow the graph signature's placeholders.
    by_name = {spec.arg.name: program.state_dict[spec.target] for spec in program.graph_signature.input_specs
               if spec.kind == torch.export.graph_signature.InputKind.PARAMETER}
    names = [v.name for v in mod["main"].params[len(example):]]
    return mod, [by_name[n] for n in names]


def check_indices(batches, config):
    """Relax lowers embedding and gather to take(mode="fast"), which does not bounds-check: an out-of-range token
    id gives a NaN logits row, an out-of-range position or last index silent garbage, where PyTorch would raise
    (how a first BioGPT build could return NaN). Refuse such batches before they reach compiled code."""
    for b in batches:
        if int(b.input_ids.min()) < 0 or int(b.input_ids.max()) >= config.vocab_size:
            raise UsageError(f"token ids outside the model's vocabulary of {config.vocab_size}: wrong tokenizer?")
        if int(b.position_ids.max()) >= config.max_position_embeddings:
            raise UsageError(f"positions beyond the model's {config.max_position_embeddings}: lower the buckets")
        if int(b.last_index.max()) >= b.input_ids.shape[1]:
            raise UsageError("last-token index outside its batch")
