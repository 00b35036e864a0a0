"""torch.compile with one backend and mode; dynamo's own counters say how many graphs it compiled."""
from __future__ import annotations

import torch
import torch._dynamo
import torch._inductor.config
from torch._dynamo.utils import counters


def cpu_inductor_config(dtype: torch.dtype, mode: str) -> dict:
    """PyTorch's CPU inference recipe for inductor. Freezing folds the weights into the graph as constants, so
    linears become prepacked MKL/oneDNN calls and weight copies disappear. In 16-bit on a CPU without native
    bf16/fp16 matmul units, ATen's 16-bit GEMM is several times slower than float32: max-autotune with inductor's
    C++ GEMM template (16-bit loads, float32 FMA) wins there. These must be set in inductor's config around the
    compiling call: torch.compile(options={"freezing": True}) is silently ignored (measured on torch 2.13)."""
    config = {"freezing": True}
    if dtype != torch.float32 or mode == "max-autotune":
        config.update(max_autotune=True, max_autotune_gemm_backends="CPP,ATEN")
    return config


class TorchCompiled:
    """torch.compile(module): with static shapes one graph per [rows, length] shape, none per batch; with
    dynamic=True one graph whose batch and length are symbolic (a one-row batch may add a specialised one)."""

    def __init__(self, module: torch.nn.Module, backend: str, mode: str, shapes: int,
                 device: torch.device, dtype: torch.dtype, dynamic: bool = False):
        torch._dynamo.reset()  # also: a same-shaped module compiled earlier would otherwise lend its graph
        counters.clear()
        # Each static shape is one entry in dynamo's cache: let all of them stay there (past the limit dynamo
        # would fall back to eager for the rest).
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, shapes + 2)
        options = {"mode": None if mode == "default" else mode} if backend == "inductor" else {}
        self.inductor_config = cpu_inductor_config(dtype, mode) if backend == "inductor" and device.type == "cpu" else {}
        self.fn = torch.compile(module, backend=backend, dynamic=dynamic, **options)

    def __call__(self, *tensors):
        with torch._inductor.config.patch(self.inductor_config):  # compilation happens inside the first calls
            return self.fn(*tensors)

    def stats(self) -> dict:
        """Graphs compiled so far, frames dynamo captured, graph breaks, and the inductor settings used."""
        return {"compilations": int(counters["stats"]["unique_graphs"]),
                "frames_compiled": int(counters["frames"]["ok"]),
                "graph_breaks": int(sum(counters["graph_break"].values())),
                "inductor_config": self.inductor_config}
