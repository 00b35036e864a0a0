"""Tensor rewriting: BioGPT's answer-logits forward compiled (torch.compile, TVM Relax) or run by ONNX Runtime/OpenVINO.

Every backend runs the token-budget batches eager uses. torch.compile backends compile once with dynamic shapes;
TVM, CUDA graphs and reduce-overhead compile static shapes, each batch's length rounded up to a bucket, each shape
once; the runtimes run one export with dynamic shapes (tensor_rewriting/runtimes.py). All compiling happens before
the timed passes; an eager check on the same inputs must agree within the tolerance or the run exits 1.

    python tensor_rewriting/tensor_experiments.py --backend inductor --mode default --model tiny-random \
        --tokenizer-dir ../shared/data/biogpt-large --data-dir ../shared/data/pubmedqa --limit 16
    python tensor_rewriting/tensor_experiments.py --backend tvm --mode ansor --tvm-trials 64 ...
    python tensor_rewriting/tensor_experiments.py --backend onnxruntime --mode int8-dynamic ...
"""
import sys
from dataclasses import dataclass

import evaluation  # first: a Ctrl-C while torch imports is then one line, not a traceback
import torch

from evaluation import Applied, DtypeOptions, UsageError, main, option
from evaluation.modeling import DTYPES, load_model
from tensor_rewriting.hot_path import DEFAULT_BUCKETS, AnswerLogits, CompiledForward, eager_check, warm_up
from tensor_rewriting.runtime_cache import default_cache_dir
from tensor_rewriting.runtimes import RUNTIME_DTYPES, RUNTIME_MODES, apply_runtime, check_runtime

MODES = {"eager": ["default"], "aot_eager": ["default"], "cudagraphs": ["default"],
         "inductor": ["default", "reduce-overhead", "max-autotune"],
         "tvm": ["default", "ansor", "meta-schedule"], **RUNTIME_MODES}


@dataclass(frozen=True)
class CompileOptions(DtypeOptions):
    backend: str = option("inductor", "eager/aot_eager/inductor/cudagraphs: torch.compile with that backend (eager: "
                                      "dynamo capture only, the control); tvm: torch.export -> TVM Relax -> LLVM "
                                      "(CPU) or CUDA; onnxruntime, openvino: torch.export -> ONNX / OpenVINO IR, run "
                                      "by that runtime (float32 --dtype; precision by --mode).", choices=list(MODES))
    mode: str = option("default", "inductor: default, reduce-overhead or max-autotune; tvm: default (the Relax "
                                  "pipeline; docs/tvm.md says what it costs on a CPU) or ansor "
                                  "(= meta-schedule, MetaSchedule auto-tuning); onnxruntime: default (fp32), "
                                  "int8-dynamic or fp16 (CUDA); openvino: default (fp32), int8-weights (NNCF), "
                                  "int8-weights-dynamic (plus dynamic int8 activations) or bf16 (CPUs with bf16 "
                                  "units); the other backends: default.",
                       choices=sorted({m for ms in MODES.values() for m in ms}))
    shapes: str = option("auto", "static: eager's token-budget batches with each length rounded up to a bucket "
                                 "(--buckets), one compilation per [rows, length] shape; dynamic: one compilation "
                                 "with symbolic batch and length over those batches unrounded; auto: static for "
                                 "tvm, cudagraphs and reduce-overhead (CUDA graphs are per shape), else dynamic.",
                         choices=["auto", "static", "dynamic"])
    buckets: str = option(",".join(map(str, DEFAULT_BUCKETS)),
                          "Static shapes: comma-separated sequence lengths each batch is padded up to (one "
                          "compilation each).")
    check_batches: int = option(2, "Batches (from the longest) also run in plain eager PyTorch to check the "
                                   "compiled logits.")
    tvm_trials: int = option(64, "tvm ansor: the MetaSchedule trial budget in all.")
    tvm_work_dir: str = option("results/tvm-work", "tvm ansor: the MetaSchedule database directory; a later run "
                                                   "reuses its tuning records.")
    runtime_cache_dir: str = option(default_cache_dir(), "onnxruntime, openvino: where exported and quantized "
                                                         "models are kept (keyed by model, mode and library "
                                                         "versions) and reused by later runs.")
    tvm_tune_ops: str = option("matmul", "tvm ansor: tune only fused kernels whose name holds one of these "
                                         "comma-separated words ('all': every kernel); the matmuls hold nearly all "
                                         "of the time.")

    def __post_init__(self):
        if self.mode not in MODES[self.backend]:
            valid = "; ".join(f"{b}: {'|'.join(ms)}" for b, ms in MODES.items())
            raise UsageError(f"--backend {self.backend} has no --mode {self.mode}; valid combinations: {valid}")
        if self.tvm_trials < 1:
            raise UsageError(f"--tvm-trials must be at least 1, got {self.tvm_trials}")
        if self.check_batches < 1:
            raise UsageError(f"--check-batches must be at least 1, got {self.check_batches}")
        self.bucket_lengths  # noqa: B018  (refuses a malformed list now)
        if self.shapes == "dynamic" and self.static_only:
            raise UsageError(f"--shapes dynamic: {self.backend} {self.mode} compiles static shapes only")
        if self.runtime and self.shapes == "static":
            raise UsageError(f"--shapes static: --backend {self.backend} runs one export with dynamic shapes")
        if self.runtime and self.dtype_name != "float32":
            raise UsageError(f"--backend {self.backend} exports the float32 model (--dtype float32); its precision "
                             f"is --mode ({'|'.join(MODES[self.backend])})")

    @property
    def runtime(self) -> bool:
        return self.backend in RUNTIME_MODES

    @property
    def static_only(self) -> bool:
        return self.backend in ("tvm", "cudagraphs") or self.mode == "reduce-overhead"

    @property
    def dynamic(self) -> bool:
        return self.shapes == "dynamic" or self.shapes == "auto" and not self.static_only

    @property
    def bucket_lengths(self) -> list[int]:
        try:
            values = sorted({int(v) for v in self.buckets.split(",")})
        except ValueError:
            raise UsageError(f"--buckets must be comma-separated integers, got {self.buckets!r}")
        if not values or values[0] <= 0:
            raise UsageError(f"--buckets must be positive lengths, got {self.buckets!r}")
        return values

    @property
    def variant(self) -> str:  # a runtime's precision is its mode: no --dtype suffix
        return f"{self.backend}-{self.mode}" if self.runtime else f"{self.backend}-{self.mode}-{self.dtype_name}"

    @property
    def dtype(self) -> str:
        """What the matmuls compute in (the roofline's peak, the tables' dtype column); int8 modes keep float32
        activations around their int8 GEMMs, as torch.ao's dynamic int8 does."""
        return RUNTIME_DTYPES.get(self.mode, "float32") if self.runtime else self.dtype_name

    def batch_buckets(self) -> list[int] | None:
        return None if self.dynamic else self.bucket_lengths


    def check(self, cfg, device):
        if cfg.decode != "score":
            raise UsageError(f"--backend {self.backend} compiles the score path (no KV cache in the compiled or "
                             "exported graph); --decode generate is not supported")
        if self.backend == "cudagraphs" and device.type != "cuda":
            raise UsageError("--backend cudagraphs needs a CUDA device (CUDA graphs do not exist on CPU)")
        if self.runtime:
            check_runtime(self.backend, self.mode, device)


def compile_forward(module, opts, device, shapes: int):
    """The technique: a callable over the 4 prompt tensors, with .stats() (compilations, build/tune times).
    shapes: how many distinct batch shapes it will be called with."""
    if opts.backend == "tvm":
        from tensor_rewriting.tvm_relax import TVMCompiler
        ops = None if opts.tvm_tune_ops == "all" else opts.tvm_tune_ops.split(",")
        return TVMCompiler(module, opts.mode, device, opts.tvm_trials, opts.tvm_work_dir, ops)
    from tensor_rewriting.torch_backends import TorchCompiled
    return TorchCompiled(module, opts.backend, opts.mode, shapes, device, DTYPES[opts.dtype_name],
                         dynamic=opts.dynamic)


def load(cfg, device):
    """The torch model in --dtype: a runtime exports it in float32 whatever precision its mode computes in."""
    return load_model(cfg, device, cfg.options.dtype_name)


def apply(model, cfg, run) -> Applied:
    """Compile, warm every shape up (so compilation is setup, never a timed pass) and check against eager."""
    opts, device = cfg.options, run.device
    if opts.runtime:
        return apply_runtime(model, cfg, run)
    batches, answer_ids = run.prompts.batches, run.prompts.answer_ids
    if opts.backend == "tvm":
        from tensor_rewriting.tvm_relax import check_indices
        check_indices(batches, model.config)
    compiled = compile_forward(AnswerLogits(model, answer_ids), opts, device,
                               len({tuple(b.input_ids.shape) for b in batches}))
    forward = CompiledForward(compiled)
    shapes = warm_up(forward, model, batches, answer_ids)
    check = eager_check(forward, model, batches[:opts.check_batches], answer_ids, cfg.dtype)
    stats = compiled.stats()
    readable = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())
    print(f"compiled {len(shapes)} shape(s): {readable}; "
          f"eager check: max |diff| {check['max_abs_logit_diff']:.2g} (tolerance {check['tolerance']:.2g}), "
          f"agreement {check['agreement_pct']:.0f}%")
    if not check["passed"]:
        print(f"error: compiled logits differ from eager by max |diff| {check['max_abs_logit_diff']:.3g} > "
              f"tolerance {check['tolerance']:.3g} ({cfg.dtype}) on {check['check_questions']} questions; "
              "no speed reported", file=sys.stderr)
        sys.exit(1)
    # compilations after the warm-up would have happened inside timed passes: counted once they are over
    after = lambda: {"recompilations_in_passes": compiled.stats()["compilations"] - stats["compilations"]}  # noqa: E731
    return Applied(forward=forward, after_passes=after,
                   record={"shapes": "dynamic" if opts.dynamic else "static", "compiled_shapes": shapes,
                           "compile": stats, "eager_check": check},
                   memory_outside_torch=opts.backend == "tvm")  # TVM allocates its own device memory


if __name__ == "__main__":
    main("tensor_rewriting", CompileOptions, apply, load, description=__doc__.splitlines()[0])
