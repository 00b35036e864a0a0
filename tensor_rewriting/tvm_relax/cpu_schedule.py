"""Schedules for an LLVM (CPU) target: a tiled, packed, vectorized matmul rule (CPUMatmul), a parallel fallback
for every other kernel (CPUFallback), and the Relax pipeline that applies them with dlight's CPU rules."""
from __future__ import annotations

import tvm
from tvm import relax, s_tir, tirx
from tvm.s_tir import dlight as dl
from tvm.s_tir.dlight.analysis import get_root_block, normalize_prim_func
from tvm.s_tir.dlight.base import get_extent, try_inline
from tvm.s_tir.dlight.gpu.matmul import (auto_inline_consumer_chain, auto_inline_producers, get_index_map,
                                         get_reduction_blocks)


# CPU matmul tiling: each thread takes MATMUL_ROWS rows of the output at a time, and within them keeps a register
# tile of TILE_ROWS rows x TILE_VECTORS SIMD vectors of accumulators (4 x 2 AVX2 registers of 8 floats: 8 of the 16,
# leaving room for the B loads and the broadcast A value). 6 x 2 tiles ran no faster on a 6144 x 1024 x 1024 fp32
# matmul; 4 x 3 and 8 x 2 spill accumulators to the stack or pad more.
TILE_ROWS, TILE_VECTORS, MATMUL_ROWS = 4, 2, 128


def vector_lanes(target: tvm.target.Target, dtype: str) -> int:
    """SIMD lanes for `dtype` on the target's CPU. From its features: TVM's llvm_get_vector_width says 512 bits
    for every x86 CPU, AVX2-only ones included, which makes register tiles spill to the stack."""
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
