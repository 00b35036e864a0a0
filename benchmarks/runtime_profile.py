"""Where one pass goes in ONNX Runtime and in eager PyTorch, by operator: what stands between the runtime and
eager's speed on this CPU. Both run the run's own batches in this process, one untimed pass first; ONNX Runtime
uses the artifact tensor_experiments caches (built here when missing).

    python -m benchmarks.runtime_profile --model biogpt-base-random --tokenizer-dir ../shared/data/biogpt-large \
        --data-dir ../shared/data/pubmedqa --limit 20 --batch-size 16 --mode default --out results/ort-profile.json
"""
from __future__ import annotations

import collections
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import evaluation  # noqa: F401  first: a Ctrl-C while torch imports is then one line, not a traceback
import torch

from benchmarks import cpu_profiler, write_json
from evaluation import UsageError, option, parse_config, run_main
from evaluation.answering import answer_logits
from evaluation.resolve import resolve
from evaluation.results import environment
from tensor_rewriting.hot_path import CompiledForward
from tensor_rewriting.ort_backend import MODEL_FILE, artifact_kind
from tensor_rewriting.runtimes import load_runner, runtime_artifact
from tensor_rewriting.tensor_experiments import CompileOptions, load

CPU = torch.device("cpu")
MATMULS = {"MatMul", "FusedMatMul", "Gemm", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
           "aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "quantized::linear_dynamic"}


@dataclass(frozen=True)
class ProfileOptions(CompileOptions):
    out: str | None = option(None, "Write the profiles as JSON here.")


def top(ms_by_op: dict[str, float], n: int = 8) -> dict:
    """Milliseconds per operator, the n largest plus the rest, and the matmuls' share of the whole."""
    total = sum(ms_by_op.values())
    ranked = sorted(ms_by_op.items(), key=lambda kv: -kv[1])
    return {"total_ms": total, "matmul_ms": sum(v for k, v in ms_by_op.items() if k in MATMULS),
            "top": dict(ranked[:n]), "rest_ms": sum(v for _, v in ranked[n:])}


def ort_profile(runner, directory: Path, one_pass) -> dict:
    """Kernel time per operator over one pass, from ONNX Runtime's own profiler (a second session, same options)."""
    options = runner.session.get_session_options()
    ms = collections.Counter()
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as trace_dir:
        options.enable_profiling, options.profile_file_prefix = True, f"{trace_dir}/pass"
        runner.session = type(runner.session)(str(directory / MODEL_FILE), options,
                                              providers=["CPUExecutionProvider"])
        runner.ops_run = runner.ops_run or {}  # the runner's own first-call profile is over: it must not end this one
        one_pass()
        for e in json.loads(Path(runner.session.end_profiling()).read_text()):
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
                ms[e["args"]["op_name"]] += e["dur"] / 1e3
    return top(ms)


def eager_profile(one_pass) -> dict:
    with cpu_profiler() as prof:
        one_pass()
    return top({e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()})


def main():
    cfg = parse_config("tensor_rewriting", ProfileOptions, description=__doc__.splitlines()[0])
    if cfg.options.backend != "onnxruntime" or cfg.device.startswith("cuda"):
        raise UsageError("runtime_profile profiles --backend onnxruntime on the CPU")
    run = resolve(cfg, CPU, Path(tempfile.gettempdir()) / "unused")
    batches, answer_ids = run.prompts.batches, run.prompts.answer_ids
    model = load(cfg, CPU)  # float32: the export's dtype
    directory, _ = runtime_artifact(cfg, model, run.identity, answer_ids.tolist(), artifact_kind(cfg.options.mode))
    runner = load_runner("onnxruntime", cfg.options.mode, directory, CPU, batches)
    forward = CompiledForward(runner)
    contenders = {"onnxruntime": lambda: [forward(model, b, answer_ids) for b in batches],
                  "eager": lambda: [answer_logits(model, b, answer_ids) for b in batches]}
    with torch.inference_mode():
        for one_pass in contenders.values():  # untimed first passes: allocations and kernel choices settle
            one_pass()
        report = {"config": cfg.to_dict(), "environment": environment(CPU), "model": run.identity,
                  "onnxruntime": ort_profile(runner, directory, contenders["onnxruntime"]),
                  "eager": eager_profile(contenders["eager"])}
    for name in contenders:
        p = report[name]
        print(f"{name}: {p['total_ms'] / 1e3:.2f} s of operator time, matmuls {p['matmul_ms'] / 1e3:.2f} s; top: "
              + ", ".join(f"{k} {v / 1e3:.2f} s" for k, v in p["top"].items()))
    if cfg.options.out:
        print(f"wrote {write_json(cfg.options.out, report)}")
    return report


if __name__ == "__main__":
    run_main(main)
