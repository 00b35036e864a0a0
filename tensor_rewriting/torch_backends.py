"""torch.compile with one backend and mode; dynamo's own counters say how many graphs it compiled."""
from __future__ import annotations

import torch
import torch._dynamo
from torch._dynamo.utils import counters


class TorchCompiled:
    """torch.compile(module) with static shapes: one graph per (batch, bucket) shape, none per batch."""

    def __init__(self, module: torch.nn.Module, backend: str, mode: str, buckets: list[int]):
        torch._dynamo.reset()
        counters.clear()
        # Each bucket length is one static-shape entry in dynamo's cache: let all of them stay there.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, len(buckets) + 2)
        options = {"mode": None if mode == "default" else mode} if backend == "inductor" else {}
        self.fn = torch.compile(module, backend=backend, dynamic=False, **options)

    def __call__(self, *tensors):
        return self.fn(*tensors)

    def stats(self) -> dict:
        """Graphs compiled so far, frames dynamo captured and graph breaks."""
        return {"compilations": int(counters["stats"]["unique_graphs"]),
                "frames_compiled": int(counters["frames"]["ok"]),
                "graph_breaks": int(sum(counters["graph_break"].values()))}
