"""The hot function as one graph with symbolic batch and length: torch.export, then ONNX (torch.onnx's dynamo
exporter) for ONNX Runtime; OpenVINO converts the torch.export program itself (its PyTorch frontend keeps
scaled_dot_product_attention whole, which its CPU plugin runs fused; from ONNX it gets the decomposed form)."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

INPUT_NAMES = ("input_ids", "attention_mask", "position_ids", "last_index")
# torch.onnx registers torchvision's ops when torchvision is installed, and says so when it is not
logging.getLogger("torch.onnx._internal.exporter._registration").addFilter(
    lambda record: "torchvision is not installed" not in record.getMessage())


def example_inputs(model) -> tuple[torch.Tensor, ...]:
    """Two rows of 16 tokens, the second padded: no size is 0 or 1, which torch.export would specialise on."""
    ids = torch.arange(4, 36).reshape(2, 16) % model.config.vocab_size
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 12:] = 0
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    return tuple(t.to(model.device) for t in (ids, mask, positions, mask.sum(1) - 1))


def export_program(module: torch.nn.Module, model) -> torch.export.ExportedProgram:
    """One program for every [rows, length] batch, so the token-budget batches run unpadded."""
    rows, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=1)
    per_token = {0: rows, 1: length}
    with torch.no_grad():
        return torch.export.export(module.eval(), example_inputs(model),
                                   dynamic_shapes=(per_token, per_token, per_token, {0: rows}))


def write_onnx(program: torch.export.ExportedProgram, path: Path) -> None:
    """PATH (the graph) and PATH.data (the weights beside it: protobuf cannot hold a file over 2 GB)."""
    with warnings.catch_warnings():
        # the exporter renames each dynamic axis once per input that shares it, and says so for every input
        warnings.filterwarnings("ignore", message=r"# The axis name: .* will not be used")
        onnx_program = torch.onnx.export(program, dynamo=True, input_names=list(INPUT_NAMES),
                                         output_names=["logits"], optimize=True, verbose=False)
        onnx_program.save(str(path), external_data=True)
