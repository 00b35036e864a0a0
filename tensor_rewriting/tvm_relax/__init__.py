"""Apache TVM Relax: torch.export -> Relax -> (MetaSchedule tuning) -> LLVM (CPU) or CUDA, one build per shape.

cuda_env: what the CUDA route needs; export: torch.export -> Relax; cpu_schedule: the CPU schedules and pipeline;
tuning: MetaSchedule and its database; compiler: TVMCompiler, which puts them together. Not named `tvm`: scripts
run from tensor_rewriting/ have it first on sys.path, where a `tvm` package would shadow Apache TVM."""
import os

import torch

# TVM's CPU thread pool takes half the logical CPUs on x86 (it assumes 2-way hyper-threading), so it would run
# compiled and tuned kernels on half the threads PyTorch uses: give it as many. TVM reads this when the pool
# starts, at the first parallel kernel, after this import.
os.environ.setdefault("TVM_NUM_THREADS", str(torch.get_num_threads()))

from tensor_rewriting.tvm_relax.compiler import TVMCompiler  # noqa: E402  (after TVM_NUM_THREADS)
from tensor_rewriting.tvm_relax.export import check_indices  # noqa: E402

__all__ = ["TVMCompiler", "check_indices"]
