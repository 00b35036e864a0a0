"""What TVM's CUDA route needs from the machine (its CUDA runtime, NVRTC and the toolkit's headers, a driver and a
device), checked before a CUDA build so that a missing piece is named in one line, not met after export and build."""
from __future__ import annotations

import ctypes
import glob
import os
import shutil

import tvm

from evaluation import UsageError


# apache-tvm 0.27.0.post1's CUDA runtime (libtvm_runtime_cuda.so) links libcudart.so.13: it needs CUDA 13 libraries
# and a driver for CUDA 13 (R580 or newer; cuDriverGetVersion >= 13000).
TVM_CUDA_MAJOR = 13


def nvrtc_problems() -> list[str]:
    """TVM's default CUDA route: the module holds CUDA source, compiled by NVRTC (through cuda-bindings) when it
    is loaded on the GPU, with the CUDA toolkit's headers from CUDA_PATH (else nvcc's ../..)."""
    try:
        from cuda.bindings import nvrtc
    except ImportError:
        return [f"cuda-bindings is not importable (TVM compiles its CUDA kernels at load time with NVRTC through "
                f"it): pip install 'cuda-bindings>={TVM_CUDA_MAJOR},<{TVM_CUDA_MAJOR + 1}'"]
    problems = []
    try:
        _, major, minor = nvrtc.nvrtcVersion()
        if major < TVM_CUDA_MAJOR:
            problems.append(f"NVRTC is CUDA {major}.{minor}, TVM's CUDA runtime is CUDA {TVM_CUDA_MAJOR}: "
                            f"pip install 'nvidia-cuda-nvrtc>={TVM_CUDA_MAJOR},<{TVM_CUDA_MAJOR + 1}'")
    except Exception as e:  # cuda.pathfinder's DynamicLibNotFoundError: no libnvrtc.so anywhere it looks
        problems.append(f"cuda-bindings finds no NVRTC library ({type(e).__name__}): pip install "
                        f"'nvidia-cuda-nvrtc>={TVM_CUDA_MAJOR},<{TVM_CUDA_MAJOR + 1}' or install the CUDA "
                        f"{TVM_CUDA_MAJOR} toolkit")
    headers = cuda_header_problem()
    return problems + ([headers] if headers else [])


def cuda_header_problem() -> str | None:
    """NVRTC compiles against the toolkit's cuda_runtime.h and CCCL (<cuda/std/cstdint>), found where TVM looks."""
    from tvm.support.nvcc import find_cuda_path

    fix = f"set CUDA_PATH to the CUDA {TVM_CUDA_MAJOR} toolkit root (where include/cuda_runtime.h is)"
    try:
        root = find_cuda_path()
    except RuntimeError:
        return f"no CUDA toolkit found for NVRTC's headers: {fix}"
    include_dirs = [os.path.join(root, "include"), *glob.glob(os.path.join(root, "targets", "*", "include"))]
    if not any(os.path.isfile(os.path.join(d, "cuda_runtime.h")) for d in include_dirs):
        # e.g. an nvcc on PATH that is a wrapper script, not a link into the toolkit
        return f"no CUDA headers under {root}, where TVM looks (CUDA_PATH, else nvcc's ../..): {fix}"
    if not glob.glob(os.path.join(root, "targets", "*", "include", "cccl", "cuda", "std", "cstdint")):
        return f"no CCCL headers (cuda/std/cstdint) under {root}/targets/*/include/cccl: {fix}"
    return None


def tvm_cuda_runtime_error() -> str | None:
    """TVM loads its CUDA runtime library when imported and drops the error if that fails (CUDA devices then
    just do not exist). Load it again to get the reason: the library the dynamic loader could not find."""
    if tvm.runtime.enabled("cuda"):
        return None
    from tvm_ffi.libinfo import load_lib_ctypes

    try:
        load_lib_ctypes(package="tvm", target_name="tvm_runtime_cuda", mode="RTLD_LOCAL",
                        extra_lib_paths=tvm.libinfo.package_lib_paths())
    except (OSError, RuntimeError) as e:
        if "libcuda.so" in str(e):
            return f"no NVIDIA driver: TVM's CUDA runtime cannot load ({e})"
        if "libcudart.so" in str(e):
            return (f"no CUDA {TVM_CUDA_MAJOR} runtime library: TVM's CUDA runtime cannot load ({e}); install "
                    f"the CUDA {TVM_CUDA_MAJOR} toolkit, or torch built for CUDA {TVM_CUDA_MAJOR}")
        return f"TVM's CUDA runtime cannot load: {e}"
    return None if tvm.runtime.enabled("cuda") else "this TVM build has no CUDA runtime"


def cuda_driver_version() -> int | None:
    """The driver's CUDA version as cuDriverGetVersion gives it (13000 = 13.0); None without a driver."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    libcuda.cuDriverGetVersion(ctypes.byref(version))
    return version.value


def cuda_device_problem(index: int) -> str:
    """TVM's CUDA runtime loaded, yet tvm.cuda(index) does not exist: why, as far as the driver tells."""
    version = cuda_driver_version()
    if version is None:
        return "no NVIDIA driver (libcuda.so.1 not found)"
    supports = f"{version // 1000}.{version % 1000 // 10}"
    if version < TVM_CUDA_MAJOR * 1000:
        return (f"the NVIDIA driver supports CUDA up to {supports}; TVM's CUDA runtime is CUDA {TVM_CUDA_MAJOR} "
                f"and needs a driver for it (R580 or newer)")
    return (f"no CUDA device {index} visible (driver for CUDA {supports} present): check nvidia-smi and "
            "CUDA_VISIBLE_DEVICES")


def check_cuda_runtime(index: int = 0):
    """Before a CUDA build, everything TVM's CUDA path needs, or a UsageError naming each missing piece.
    Without it a missing piece surfaces as Target.from_device's ValueError on a device that does not exist, or
    as an NVRTC error at the first call, after export and build."""
    problems = []
    if os.environ.get("TVM_CUDA_COMPILE_MODE", "nvrtc").lower() == "nvcc":  # TVM's other load-time compiler
        if shutil.which("nvcc") is None:
            problems.append("TVM_CUDA_COMPILE_MODE=nvcc but no nvcc on PATH")
    else:
        problems += nvrtc_problems()
    runtime_error = tvm_cuda_runtime_error()
    if runtime_error:
        problems.append(runtime_error)
    elif not tvm.cuda(index).exist:
        problems.append(cuda_device_problem(index))
    if problems:
        raise UsageError("--backend tvm cannot use CUDA here: " + "; ".join(problems))
