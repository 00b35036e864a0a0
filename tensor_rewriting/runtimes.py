"""ONNX Runtime and OpenVINO as backends of tensor_experiments: build (or reuse) the exported artifact, load it,
check it against eager PyTorch on the same batches, then free the torch weights so the timed passes measure the
runtime alone.

The runtime runs the hot function (hot_path.AnswerLogits) exported once with symbolic batch and length, so every
token-budget batch eager runs is run as it is, unpadded. Export, quantization and loading are setup (setup_s)."""
from __future__ import annotations

import ctypes
import gc
import sys
import time

import psutil
import torch

from evaluation import Applied
from evaluation.answering import answer_logits
from tensor_rewriting.hot_path import TOLERANCE, AnswerLogits, CompiledForward, compare_logits, forward_logits
from tensor_rewriting.runtime_cache import cached_artifact, model_identity

RUNTIME_MODES = {"onnxruntime": ["default", "int8-dynamic", "fp16"],
                 "openvino": ["default", "int8-weights", "int8-weights-dynamic", "bf16"]}
RUNTIME_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}  # the 16-bit modes' compute dtype; the rest float32
# A quantized or 16-bit runtime may differ from float32 eager by this multiple of what PyTorch's own scheme of the
# same kind differs on the same batches (the yardstick): the rounding is of the same kind, its details are not
# (ORT's asymmetric uint8 activations, OpenVINO's per-group ones, the order of reductions).
YARDSTICK_FACTOR = 2.0


def check_runtime(backend: str, mode: str, device: torch.device) -> None:
    """What this device cannot run, refused before any loading."""
    backend_module(backend).check_device(mode, device)


def backend_module(backend: str):
    """Imported only when a run uses it: each runtime takes a second or more to import."""
    if backend == "onnxruntime":
        from tensor_rewriting import ort_backend
        return ort_backend
    from tensor_rewriting import openvino_backend
    return openvino_backend


def runtime_artifact(cfg, model, identity: dict, answer_ids: list[int], kind: str):
    """(directory, record) of this backend's artifact of `kind`, built now or found in the cache. Quantized and
    16-bit artifacts start from the float32 one, itself cached."""
    backend = cfg.options.backend
    parts = {"backend": backend, "kind": kind, "recipe": backend_module(backend).RECIPES[kind],
             "attn_implementation": cfg.attn_implementation,
             "identity": model_identity(identity, model.config, answer_ids)}

    def build(directory):
        runtime = backend_module(backend)
        if kind != "fp32":
            source, _ = runtime_artifact(cfg, model, identity, answer_ids, "fp32")
            return {"source_artifact": str(source), **runtime.build_from_fp32(kind, source, directory)}
        from tensor_rewriting.onnx_export import export_program

        t0 = time.perf_counter()
        program = export_program(AnswerLogits(model, torch.tensor(answer_ids, device=model.device)), model)
        return {"torch_export_s": time.perf_counter() - t0, **runtime.build_fp32(program, model.config, directory)}

    return cached_artifact(cfg.options.runtime_cache_dir, f"{backend}-{kind}", parts, build)


def load_runner(backend: str, mode: str, directory, device: torch.device, batches):
    threads = torch.get_num_threads()
    if backend == "onnxruntime":
        from tensor_rewriting.ort_backend import ORTRunner
        largest = (max(b.input_ids.shape[0] for b in batches), max(b.input_ids.shape[1] for b in batches))
        return ORTRunner(directory, device, threads, largest)
    from tensor_rewriting.openvino_backend import OVRunner
    return OVRunner(directory, mode, threads)


def yardstick(model, kind: str, batches, answer_ids) -> tuple[str, torch.Tensor] | None:
    """PyTorch's own scheme of the same kind as the artifact, applied to `model` in place (it is freed after),
    and its logits on `batches`: dynamic int8 on every decoder Linear (per output channel weights, as the
    quantization technique's dynamic-int8) for int8 artifacts; the model cast for bf16/fp16. None for fp32."""
    if kind.startswith("int8"):
        torch.ao.quantization.quantize_dynamic(
            model.biogpt.layers, {torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
            dtype=torch.qint8, inplace=True)
        name = "torch.ao dynamic int8 (per-channel weights, decoder Linears)"
    elif kind in ("bf16", "fp16"):
        model.to(torch.bfloat16 if kind == "bf16" else torch.float16)
        name = f"eager PyTorch in {'bfloat16' if kind == 'bf16' else 'float16'}"
    else:
        return None
    return name, forward_logits(answer_logits, model, batches, answer_ids)


def check_against_eager(forward, model, batches, answer_ids, kind: str) -> dict:
    """Runtime vs float32 eager on the same batches. Float32 within the float32 tolerance; a quantized or 16-bit
    runtime within YARDSTICK_FACTOR x the difference PyTorch's own scheme of that kind makes (never below the
    float32 tolerance)."""
    got = forward_logits(forward, model, batches, answer_ids)
    want = forward_logits(answer_logits, model, batches, answer_ids)
    atol, rtol = TOLERANCE["float32"]
    tolerance = atol + rtol * want.abs().max().item()
    measured = yardstick(model, kind, batches, answer_ids)
    if measured is None:
        return compare_logits(got, want, tolerance) | {"tolerance_basis": "float32 (atol 1e-4, rtol 1e-4)"}
    name, theirs = measured
    theirs_diff = (theirs - want).abs().max().item()
    return compare_logits(got, want, max(tolerance, YARDSTICK_FACTOR * theirs_diff)) | {
        "tolerance_basis": f"{YARDSTICK_FACTOR:g} x the max |diff| of {name} on the same batches",
        "yardstick_max_abs_logit_diff": theirs_diff,
        "yardstick_agreement_pct": 100.0 * (theirs.argmax(1) == want.argmax(1)).float().mean().item()}


def release_freed_memory() -> None:
    """Hand freed heap back to the OS (glibc keeps it mapped otherwise), so that the timed passes' peak RSS
    counts what the runtime holds, not what the torch model and the eager check left behind."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim this way
        pass


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / 2**20


def apply_runtime(model, cfg, run) -> Applied:
    """Build or reuse the artifact, load it, run the longest batch once (its memory), check, free torch. `run`:
    the runner's Resolved record, whose batches (eager's token-budget batches) every pass will time."""
    opts, device = cfg.options, run.device
    batches, answer_ids = run.prompts.batches, run.prompts.answer_ids
    kind = backend_module(opts.backend).artifact_kind(opts.mode)
    t0 = time.perf_counter()
    directory, artifact = runtime_artifact(cfg, model, run.identity, answer_ids.tolist(), kind)
    artifact_s = time.perf_counter() - t0
    before = rss_mib()
    runner = load_runner(opts.backend, opts.mode, directory, device, batches)
    forward = CompiledForward(runner)
    forward(model, batches[0], answer_ids)  # the longest batch: the runtime's working memory at its largest
    memory_mib = rss_mib() - before
    t0 = time.perf_counter()
    check = check_against_eager(forward, model, batches[:opts.check_batches], answer_ids,
                                "bf16" if opts.mode == "bf16" else kind)
    check_s = time.perf_counter() - t0
    stats = runner.stats()
    print(f"{opts.backend} {opts.mode}: artifact {'reused' if artifact['reused'] else 'built'} in {artifact_s:.1f} s "
          f"({artifact['bytes_on_disk'] / 2**20:,.0f} MiB, {directory}), loaded in {stats['load_s']:.1f} s; eager "
          f"check: max |diff| {check['max_abs_logit_diff']:.2g} (tolerance {check['tolerance']:.2g}: "
          f"{check['tolerance_basis']}), agreement {check['agreement_pct']:.0f}%")
    if not check["passed"]:
        print(f"error: {opts.backend} {opts.mode} logits differ from eager float32 by max |diff| "
              f"{check['max_abs_logit_diff']:.3g} > tolerance {check['tolerance']:.3g} on "
              f"{check['check_questions']} questions; no speed reported", file=sys.stderr)
        sys.exit(1)
    model.to("meta")  # the torch weights go: from here on the process holds the runtime's copy only
    release_freed_memory()
    weights = sum(p.stat().st_size for p in directory.iterdir() if p.name != "meta.json")
    return Applied(forward=forward, footprint_bytes=weights,
                   record={"shapes": "dynamic", "artifact": artifact, "runtime": stats,
                           "setup": {"artifact_s": artifact_s, "load_s": stats["load_s"], "check_s": check_s},
                           "runtime_memory_mib": memory_mib, "rss_after_free_mib": rss_mib(),
                           "eager_check": check})
