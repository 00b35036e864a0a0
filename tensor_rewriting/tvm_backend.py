"""Apache TVM Relax: torch.export -> Relax -> (MetaSchedule tuning) -> LLVM (CPU) or CUDA, one build per shape.

The torch.export route, not TVM's dynamo backend: with TVM 0.27 the dynamo route fails on BioGPT's embedding op.
Weights stay Relax function inputs and are handed over from PyTorch by DLPack (no copy of a 6 GB model)."""
from __future__ import annotations

import ctypes
import contextlib
import functools
import glob
import inspect
import logging
import os
import re
import shutil
import subprocess
import sys
import time

import torch
import tvm
import tvm_ffi
from tvm import relax, s_tir, tirx
from tvm.ir.utils import derived_object
from tvm.relax.frontend.torch import from_exported_program
from tvm.s_tir import dlight as dl
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.dlight.analysis import get_root_block, normalize_prim_func
from tvm.s_tir.dlight.base import get_extent, try_inline
from tvm.s_tir.dlight.gpu.matmul import (auto_inline_consumer_chain, auto_inline_producers, get_index_map,
                                         get_reduction_blocks)
from tvm.s_tir.meta_schedule.builder.local_builder import default_export
from tvm.s_tir.meta_schedule.runner.local_runner import (LocalRunnerFuture, default_alloc_argument,
                                                         default_run_evaluator)

from evaluation import UsageError

# TVM's CPU thread pool takes half the logical CPUs on x86 (it assumes 2-way hyper-threading): 1 thread on this
# 2-core machine, against PyTorch's 2. Give it as many as PyTorch uses. TVM reads this when the pool starts, at the
# first parallel kernel, which comes after this import.
os.environ.setdefault("TVM_NUM_THREADS", str(torch.get_num_threads()))

JSON_DATABASE_BROKEN = (f"MetaSchedule cannot write its tuning database here: tvm.ir.save_json segfaults with "
                        f"apache-tvm-ffi {tvm_ffi.__version__} under apache-tvm {tvm.__version__}; "
                        "pip install apache-tvm-ffi==0.1.14.post0 (the version TVM 0.27 works with) for --mode ansor")


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


def tvm_target(device: torch.device) -> tvm.target.Target:
    if device.type == "cuda":
        check_cuda_runtime(device.index or 0)
        return tvm.target.Target.from_device(tvm.cuda(device.index or 0))
    # The host CPU by name: plain "llvm" means generic x86-64 (no AVX), far from what the CPU can do.
    return tvm.target.Target({"kind": "llvm", "mcpu": tvm.target.codegen.llvm_get_system_cpu(),
                              "num-cores": os.cpu_count()})


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


CONVERTERS = {"embedding.default": embedding_clipped, "layer_norm.default": layer_norm_in_float32, "native_layer_norm.default": layer_norm_in_float32,
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


# CPU matmul tiling: each thread takes MATMUL_ROWS rows of the output at a time, and within them keeps a register
# tile of TILE_ROWS rows x TILE_VECTORS SIMD vectors of accumulators (4 x 2 AVX2 registers of 8 floats: 8 of the 16,
# leaving room for the B loads and the broadcast A value). Tried on a 6144x1024x1024 fp32 matmul on 2 Zen 3 cores:
# 4x2 and 6x2 tiles give the same ~55-70 GFLOP/s; 4x3 or 8x2 spill or pad.
TILE_ROWS, TILE_VECTORS, MATMUL_ROWS = 4, 2, 128


def vector_lanes(target: tvm.target.Target, dtype: str) -> int:
    """SIMD lanes for `dtype` on the target's CPU. From its features: TVM's llvm_get_vector_width says 512 bits
    for every x86 CPU, AVX2-only Zen 3 included, which made register tiles spill to the stack."""
    features = tvm.target.codegen.llvm_get_cpu_features(target)
    bits = 512 if "avx512f" in features else 256 if "avx" in features else 128
    return max(bits // tvm.DataType(dtype).bits, 1)


def producer_writing(sch, block, buffer):
    return next(p for p in sch.get_producers(block) if sch.get(p).writes[0].source.same_as(buffer))


class CPUMatmul(dl.ScheduleRule):
    """Matmul-like kernels (and their fused prologues/epilogues) on a CPU; dlight's CPU rules have none.
    Normalized as dlight's GPU Matmul does, to C[S, I, J] += A[S, I, K] * B[S, K, J], then: B packed into
    panels of one register tile's width (contiguous reads in the inner loop: without it the panel's K rows sit
    one page apart and the kernel ran at half the speed), rows split across threads, a register tile of
    accumulators over the whole K, the epilogue (bias, cast, residual add) applied as the tile is written."""

    def apply(self, func, target, _):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        main = get_reduction_blocks(sch, sch.get_child_blocks(get_root_block(sch)))
        if main is None or get_index_map(sch.get(main[0])) is None:
            return None
        try:
            return self.schedule(sch, main[0], target)
        except tvm.s_tir.ScheduleError:  # a shape this schedule does not fit: left to the next rule
            return None

    @staticmethod
    def schedule(sch, main, target):
        matmul_map, a_map, b_map, c_map = get_index_map(sch.get(main))
        s, j, k = b_map.final_indices
        b_kj = tirx.IndexMap(b_map.initial_indices, [s, k, j], None)  # B with J innermost: vector loads
        sch.transform_layout(sch.reindex(main, ("read", 0)), ("write", 0), a_map)
        sch.transform_layout(sch.reindex(main, ("read", 1)), ("write", 0), b_kj)
        sch.transform_layout(sch.reindex(main, ("write", 0)), ("read", 0), c_map)
        sch.transform_block_layout(main, matmul_map)

        lanes = vector_lanes(target, sch.get(main).writes[0].source.dtype)
        cols = TILE_VECTORS * lanes
        rows = int(sch.get(main).iter_vars[1].dom.extent)
        block_rows = min(MATMUL_ROWS, -(-rows // TILE_ROWS) * TILE_ROWS)
        # Pad I and J to whole tiles: exact loops (a split with a remainder predicate here corrupted memory)
        sch.pad_einsum(main, [1, block_rows, cols, 1])

        packed = sch.cache_read(main, 1, "global")
        pack = lambda s, k, j: (s, j // cols, k, j % cols)  # noqa: E731
        sch.transform_layout(packed, ("write", 0), pack)
        sch.transform_block_layout(packed, pack)
        auto_inline_producers(sch, packed)  # transposes, casts and padding read while packing
        batch, panel, _, lane = sch.get_loops(packed)
        sch.parallel(sch.fuse(batch, panel))
        sch.vectorize(lane)
        a_side = producer_writing(sch, main, sch.get(main).reads[0].source)
        auto_inline_producers(sch, a_side)
        sch.compute_inline(a_side)

        batch, i, j, k = sch.get_loops(main)
        i_block, i_tile, i_reg = sch.split(i, [None, block_rows // TILE_ROWS, TILE_ROWS])
        j_tile, j_reg = sch.split(j, [None, cols])
        sch.reorder(batch, i_block, j_tile, i_tile, k, i_reg, j_reg)
        sch.parallel(sch.fuse(batch, i_block))
        sch.unroll(i_reg)
        sch.vectorize(j_reg)
        tile = sch.cache_write(main, 0, "local")
        sch.reverse_compute_at(tile, i_tile, preserve_unit_loops=True)
        auto_inline_consumer_chain(sch, tile)
        _, lane = sch.split(sch.get_loops(tile)[-1], [None, lanes])
        sch.vectorize(lane)
        sch.decompose_reduction(main, k)
        return sch


class CPUFallback(dl.ScheduleRule):
    """Every other kernel: blocks inlined where they can be, then each remaining block's spatial loops fused and
    spread over the threads, vectorized when the block is elementwise and the loop splits evenly."""

    def apply(self, func, target, _):
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        sch = s_tir.Schedule(func)
        blocks = normalize_prim_func(sch)
        if blocks is None:
            return None
        for block in try_inline(sch, blocks):
            kinds = block.dom_kind()
            loops = sch.get_loops(block.block_rv)
            spatial = [loop for loop, kind in zip(loops, kinds) if kind == "S"]
            if not spatial:
                continue
            sch.reorder(*spatial, *[loop for loop, kind in zip(loops, kinds) if kind != "S"])
            fused = sch.fuse(*spatial)
            lanes = vector_lanes(target, sch.get(block.block_rv).writes[0].source.dtype)
            extent = get_extent(sch, fused)
            if block.is_injective() and isinstance(extent, int) and extent % lanes == 0:
                fused, lane = sch.split(fused, [None, lanes])
                sch.vectorize(lane)
            sch.parallel(fused)
        return sch


def cpu_pipeline(target: tvm.target.Target, fuse: bool) -> tvm.transform.Pass:
    """tvm.compile's Relax pipeline for an LLVM target. TVM's default there (relax.pipeline's
    default_build_pipeline) neither fuses nor schedules: every op ran as its own single-threaded loop nest, 235x
    slower than eager. This is relax.backend.cpu_generic's pipeline (legalize, fuse) with dlight's CPU rules
    and the two above in between, as relax.backend.cuda does with dlight's GPU rules. Transposes feeding a
    matmul are fused into it first. fuse=False: a module from tune(), already legalized and fused; its tuned
    kernels are marked scheduled, and ApplyDefaultSchedule leaves them alone."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu  # dataflow_lower_passes is not re-exported

    front = [relax.transform.FuseTransposeMatmul(), *cpu.library_dispatch_passes(target),
             *cpu.legalize_passes(target)] if fuse else []
    schedules = dl.ApplyDefaultSchedule(dl.cpu.GEMV(), CPUMatmul(), dl.cpu.Reduction(), CPUFallback())
    passes = tvm.transform.Sequential([*front, schedules, *cpu.dataflow_lower_passes(target),
                                       *cpu.finalize_passes(target)])

    @tvm.transform.module_pass(opt_level=0, name="CPUDefaultPipeline")
    def pipeline(mod, _ctx):
        with target:
            return passes(mod)

    return pipeline


@functools.cache
def json_database_works() -> bool:
    """Serialise one TIR node in a child process: a mismatched tvm-ffi build segfaults in ToJSONGraph."""
    probe = "import tvm; tvm.ir.save_json(tvm.tirx.IntImm('int32', 1))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


@functools.cache
def import_tensor_intrinsics():
    """Import tvm.s_tir.tensor_intrin (MetaSchedule's TuneContext and dlight's GPU matmul import it) in seconds,
    not minutes. It parses ~250 TVMScript intrinsics, and TVMScript's prim_func calls inspect.stack() for each;
    for every frame whose file is not on disk (<frozen importlib._bootstrap>, <ast>) inspect.getmodule scans all
    of sys.modules (3,600 with torch and transformers loaded) and finds nothing. That was ~30,000 scans: 11 min
    of this import on this busy 2-core CPU, 8 s without them. For a frame in such a pseudo-file the scan can only
    end in None (no module's file is "<ast>", and a frame has no __module__), so that is answered at once."""
    scan = inspect.getmodule

    def getmodule(obj, _filename=None):
        if inspect.isframe(obj) and _filename and _filename.startswith("<") and _filename.endswith(">"):
            return None
        return scan(obj, _filename)

    inspect.getmodule = getmodule
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401
    finally:
        inspect.getmodule = scan


@derived_object
class InProcessBuilder(ms.builder.PyBuilder):
    """Builds candidates in this process. MetaSchedule's LocalBuilder starts worker processes, and each one
    imports tvm and tvm.s_tir.tensor_intrin. That import parses hundreds of TVMScript intrinsics and took
    30-100 s on this small, busy CPU, so every candidate hit the 30 s build timeout and tuning recorded nothing.
    LLVM schedules never tensorize with those intrinsics."""

    def build(self, build_inputs):
        from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

        results = []
        for b in build_inputs:
            try:
                lib = tvm.tirx.build(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(b.mod), target=b.target)
                results.append(ms.builder.BuilderResult(default_export(lib), None))
            except Exception as e:  # a bad candidate is a failed trial, not a failed run
                results.append(ms.builder.BuilderResult(None, f"{type(e).__name__}: {e}"))
        return results


@derived_object
class InProcessRunner(ms.runner.PyRunner):
    """Times candidates in this process with MetaSchedule's own evaluator (no worker process start-up)."""

    def run(self, runner_inputs):
        config = ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50, enable_cpu_cache_flush=False)
        futures = []
        for r in runner_inputs:
            try:
                device = tvm.runtime.device(r.device_type, 0)
                args = default_alloc_argument(device, [a.as_json() for a in r.args_info], 1)
                costs = default_run_evaluator(tvm.runtime.load_module(r.artifact_path), device, config, args)
                futures.append(LocalRunnerFuture(costs, None))
            except Exception as e:
                futures.append(LocalRunnerFuture(None, f"{type(e).__name__}: {e}"))
        return futures


def has_record(database: ms.Database, task) -> bool:
    """A measured record, not only failed candidates (those are stored with a 1e10 s run time)."""
    if not database.has_workload(task.dispatched[0]):
        return False
    best = database.get_top_k(database.commit_workload(task.dispatched[0]), 1)
    return bool(best) and bool(best[0].run_secs) and float(best[0].run_secs[0]) < 1e9


@contextlib.contextmanager
def interrupt_leaves_no_empty_database(work_dir: str):
    """Ctrl-C during tuning: remove the database files MetaSchedule created but never wrote a record to (an empty
    file would read as a broken database next time), keep the records tuned so far, and say so."""
    before = set(os.listdir(work_dir))
    try:
        yield
    except KeyboardInterrupt:
        for name in set(os.listdir(work_dir)) - before:
            path = os.path.join(work_dir, name)
            if os.path.isfile(path) and os.path.getsize(path) == 0:
                os.remove(path)
        raise KeyboardInterrupt(f"tuning stopped; records tuned so far kept in {work_dir}") from None


@contextlib.contextmanager
def foreign_log_handlers_set_aside():
    """Creating tune contexts runs MetaSchedule's logging.create_loggers, which hands its logger's current handlers
    by name to logging.config.dictConfig: a handler its own config did not create fails it (unnamed: an
    AttributeError on None.format; named: a ValueError). That config also makes the logger non-propagating, and
    pytest >= 9.2 attaches its unnamed capture handlers to every non-propagating logger at each test, so every
    tuning after a process's first failed under it. Such handlers are detached while MetaSchedule configures its
    loggers, then attached again."""
    logger = logging.getLogger(ms.__name__)  # "tvm.s_tir.meta_schedule", the name create_loggers configures
    own = {f"{logger.name}.console", f"{logger.name}.file"}
    foreign = [h for h in logger.handlers if h.get_name() not in own]
    for handler in foreign:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in foreign:
            logger.addHandler(handler)


def shape_free(mod: tvm.IRModule) -> str:
    """A kernel's TVMScript with its integer literals blanked: the same text for one kernel at two bucket
    lengths (and for two kernels that differ only in their sizes)."""
    return re.sub(r"\b\d+\b", "#", mod.script())


def transfer_records(database: ms.Database, tasks, target: tvm.target.Target) -> int:
    """Give tasks without a record the schedule of the same kernel at another size (another bucket).
    MetaSchedule looks records up by exact workload, shapes included, so every new bucket length was tuned from
    scratch. The 3 fastest records of each matching kernel are replayed on the new shape in turn: a trace whose
    tile sizes do not fit it fails to replay, and the next is tried. The first that replays is built and timed
    here and committed, with its own time, as the new workload's record. Returns how many tasks got one."""
    keys, measured = {}, {}
    for record in database.get_all_tuning_records():
        if record.run_secs and float(record.run_secs[0]) < 1e9:
            workload = tvm_ffi.structural_hash(record.workload.mod)
            if workload not in keys:
                keys[workload] = shape_free(record.workload.mod)
            measured.setdefault(keys[workload], []).append(record)
    cpu = target.kind.name == "llvm"
    builder = InProcessBuilder() if cpu else ms.builder.LocalBuilder()
    runner = InProcessRunner() if cpu else ms.runner.LocalRunner()
    transferred = 0
    for task in tasks:
        mod = task.dispatched[0]
        for record in sorted(measured.get(shape_free(mod), []), key=lambda r: float(r.run_secs[0]))[:3]:
            sch = s_tir.Schedule(mod)
            try:
                record.trace.apply_to_schedule(sch, remove_postproc=False)
            except Exception:  # noqa: BLE001  a split or tile decision that does not fit this shape
                continue
            args = ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"])
            (built,) = builder.build([ms.builder.BuilderInput(sch.mod, target)])
            if built.error_msg:
                continue
            (future,) = runner.run([ms.runner.RunnerInput(built.artifact_path, "cpu" if cpu else "cuda", args)])
            result = future.result()
            if result.error_msg or not result.run_secs:
                continue
            database.commit_tuning_record(ms.database.TuningRecord(
                sch.trace, database.commit_workload(mod), result.run_secs, target, args))
            transferred += 1
            break
    return transferred


def tune(mod: tvm.IRModule, target: tvm.target.Target, trials: int, work_dir: str, ops: list[str] | None):
    """MetaSchedule over the fused kernels (those named like `ops`, all when None) that work_dir's database
    has no record for, after those given a record of the same kernel at another bucket length; then every
    kernel the database knows is applied. (module, task counts)."""
    import_tensor_intrinsics()  # before TuneContext imports it the slow way
    with target:
        mod = tvm.transform.Sequential([relax.transform.DecomposeOpsForInference(),
                                        relax.transform.CanonicalizeBindings(),
                                        relax.get_pipeline("zero")])(mod)  # legalize + fuse: the tasks
    tasks = [t for t in ms.relax_integration.extract_tasks(mod, target)
             if ops is None or any(op in t.task_name for op in ops)]
    database = ms.database.JSONDatabase(work_dir=work_dir)
    missing = [t for t in tasks if not has_record(database, t)]
    transferred = transfer_records(database, missing, target) if missing else 0
    todo = [t for t in missing if not has_record(database, t)]
    if todo:
        # A budget too small to fit a cost model on: replay random schedules rather than evolve a population.
        search = "evolutionary" if trials >= 64 else "replay-trace"
        with foreign_log_handlers_set_aside():
            contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(todo, work_dir,
                                                                                      strategy=search, seed=0)
        cpu = target.kind.name == "llvm"  # on a GPU box, MetaSchedule's own process-pool builder and runner
        with interrupt_leaves_no_empty_database(work_dir):
            ms.tune.tune_tasks(
                tasks=contexts, task_weights=weights, work_dir=work_dir, database=database,
                max_trials_global=trials, max_trials_per_task=max(1, trials // len(todo)),
                num_trials_per_iter=min(64, max(1, trials // len(todo))),
                builder=InProcessBuilder() if cpu else "local", runner=InProcessRunner() if cpu else "local",
                cost_model="xgb" if search == "evolutionary" else "random")
    with target, database, tvm.transform.PassContext(opt_level=3):
        mod = relax.transform.MetaScheduleApplyDatabase(enable_warning=False)(mod)
    return mod, {"tasks": len(tasks), "tasks_tuned": len(todo), "tasks_from_database": len(tasks) - len(missing),
                 "tasks_transferred": transferred}


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
