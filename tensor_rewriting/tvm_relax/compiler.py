"""TVMCompiler: the callable tensor_experiments.py times. Per input shape it exports, tunes (--mode ansor), builds
for the host CPU or a CUDA device and keeps the build; on CUDA it counts the kernels that use tensor cores."""
from __future__ import annotations

import os
import re
import time

import torch
import tvm
from tvm import relax

from evaluation import UsageError
from tensor_rewriting.tvm_relax.cpu_schedule import cpu_pipeline
from tensor_rewriting.tvm_relax.cuda_env import check_cuda_runtime
from tensor_rewriting.tvm_relax.export import export_relax
from tensor_rewriting.tvm_relax.tuning import JSON_DATABASE_BROKEN, import_tensor_intrinsics, json_database_works, tune


def tvm_target(device: torch.device) -> tvm.target.Target:
    if device.type == "cuda":
        check_cuda_runtime(device.index or 0)
        return tvm.target.Target.from_device(tvm.cuda(device.index or 0))
    # The host CPU by name: plain "llvm" means generic x86-64 (no AVX), far from what the CPU can do.
    return tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
                              "num-cores": os.cpu_count()})


# Tensor-core instructions in the CUDA C that TVM generates: WMMA (what dlight's Matmul rule emits), inline-PTX
# mma.sync, Hopper's wgmma.
TENSOR_CORE_OPS = re.compile(r"wmma::mma_sync|\bmma\.sync\b|\bwgmma\.")
KERNEL_DEFINITION = re.compile(r'extern "C" __global__ void (?:__launch_bounds__\(\d+\) )?\w+\([^)]*\)\s*\{')


def cuda_source(executable) -> str:
    """The CUDA C of a built module: the host module imports a device module that holds the source (it is
    compiled when loaded on the GPU), so it can be read, and compiled offline, on a machine without one."""
    pending = [executable.mod]
    while pending:
        module = pending.pop()
        if module.kind == "cuda":
            return module.inspect_source()
        pending += list(module.imports)
    raise ValueError("no CUDA device module in this build")


def tensor_core_kernels(source: str) -> tuple[int, int]:
    """(kernels with tensor-core instructions, kernels) in a CUDA module's source."""
    starts = [m.start() for m in KERNEL_DEFINITION.finditer(source)] + [len(source)]
    bodies = [source[a:b] for a, b in zip(starts, starts[1:])]
    return sum(bool(TENSOR_CORE_OPS.search(b)) for b in bodies), len(bodies)


class TVMCompiler:
    """Callable over the 4 prompt tensors; builds (and tunes) once per input shape, then reuses the build."""

    def __init__(self, module: torch.nn.Module, mode: str, device: torch.device, trials: int, work_dir: str,
                 tune_ops: list[str] | None = None):
        self.module, self.tune, self.tune_ops = module, mode in ("ansor", "meta-schedule"), tune_ops
        if self.tune and not json_database_works():
            raise UsageError(JSON_DATABASE_BROKEN)
        self.target, self.trials, self.work_dir = tvm_target(device), trials, work_dir
        self.dev = tvm.cuda(device.index or 0) if device.type == "cuda" else tvm.cpu(0)
        self.builds, self.times = {}, {"export_s": 0.0, "tune_s": 0.0, "build_s": 0.0}
        self.tuning = {"tasks": 0, "tasks_tuned": 0, "tasks_from_database": 0, "tasks_transferred": 0}
        self.kernels = {"kernels": 0, "tensor_core_kernels": 0}  # CUDA builds, all shapes together

    def compile(self, tensors: tuple):
        """(executable, weights) for these inputs' shapes: export, tuning, tvm.compile. Needs no device, so a
        CPU machine can build for a CUDA target."""
        t0 = time.perf_counter()
        with torch.inference_mode(False):  # torch.export traces with ordinary (not inference) tensors
            mod, weights = export_relax(self.module, tuple(t.clone() for t in tensors))
        t1 = time.perf_counter()
        if self.tune:
            os.makedirs(self.work_dir, exist_ok=True)
            mod, counts = tune(mod, self.target, self.trials, self.work_dir, self.tune_ops)
            self.tuning = {k: self.tuning[k] + v for k, v in counts.items()}
        t2 = time.perf_counter()
        if self.target.kind.name == "cuda":
            import_tensor_intrinsics()  # dlight's Matmul rule imports them to tensorize float16 matmuls
        # On CUDA, tvm.compile's default pipeline (relax.backend.cuda) schedules every kernel with dlight's GPU
        # rules (Matmul, GEMV, Reduction, GeneralReduction, Fallback); one left unscheduled fails the build.
        cpu = self.target.kind.name == "llvm"
        executable = tvm.compile(mod, target=self.target,
                                 relax_pipeline=cpu_pipeline(self.target, fuse=not self.tune) if cpu else "default")
        if self.target.kind.name == "cuda":
            tensor_core, kernels = tensor_core_kernels(cuda_source(executable))
            self.kernels = {"kernels": self.kernels["kernels"] + kernels,
                            "tensor_core_kernels": self.kernels["tensor_core_kernels"] + tensor_core}
        self.times = {k: self.times[k] + v for k, v in
                      (("export_s", t1 - t0), ("tune_s", t2 - t1), ("build_s", time.perf_counter() - t2))}
        return executable, weights

    def build(self, tensors: tuple):
        executable, weights = self.compile(tensors)
        t0 = time.perf_counter()
        vm = relax.VirtualMachine(executable, self.dev)  # on CUDA, NVRTC compiles the kernels here
        self.times["build_s"] += time.perf_counter() - t0
        return vm["main"], [tvm.runtime.from_dlpack(w.detach().contiguous()) for w in weights]

    def __call__(self, *tensors):
        key = tuple((tuple(t.shape), t.dtype) for t in tensors)
        if key not in self.builds:
            self.builds[key] = self.build(tensors)
        main, weights = self.builds[key]
        out = main(*[tvm.runtime.from_dlpack(t.contiguous()) for t in tensors], *weights)
        return torch.from_dlpack(out if isinstance(out, tvm.runtime.Tensor) else out[0])

    def tensor_cores(self) -> tuple[bool | None, str]:
        """Whether the CUDA kernels built so far use tensor cores, read from their source; None on a CPU."""
        if self.target.kind.name != "cuda":
            return None, "not a CUDA build"
        used, kernels = self.kernels["tensor_core_kernels"], self.kernels["kernels"]
        if used:
            return True, f"{used} of {kernels} kernels use tensor-core instructions (wmma/mma.sync/wgmma)"
        return False, (f"none of {kernels} kernels uses tensor-core instructions: dlight's CUDA Matmul rule, which "
                       "schedules untuned kernels, tensorizes only float16 and int8 matmuls with all extents > 64")

    def stats(self) -> dict:
        tensor_cores, why = self.tensor_cores()
        return {"compilations": len(self.builds), **self.times,
                "tensor_cores": tensor_cores, "tensor_cores_reason": why,
                **({"tuning_trials": self.trials, "tuning_work_dir": self.work_dir, **self.tuning}
                   if self.tune else {})}
