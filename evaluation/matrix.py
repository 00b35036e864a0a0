"""Every variant of every technique in one list, the baseline first, and the one command that runs them.

Each variant runs as its own process (its own peak memory, fresh compiler caches) with the baseline as its
--reference; a failed command leaves RUN/error.json, a combination known to be broken on this device is not run
and leaves RUN/error.json with "skipped": true and the reason. The report (evaluation.report) is the table.
The wandb sweeps in sweeps/ are written from this list (`--write-sweeps`), so adding a variant here is all it takes.

    python -m evaluation.matrix --out results/matrix-tiny -- --model tiny-random \
        --tokenizer-dir ../shared/data/biogpt-large --data-dir ../shared/data/pubmedqa --limit 20 --wandb disabled
    python -m evaluation.matrix --technique quantization --out results/quant -- --model biogpt-base-random ...
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import UsageError, run_main

ROOT = Path(__file__).resolve().parents[1]
PRECISION = "precision_reduction/precision_experiments.py"
PRUNING = "pruning/pruning.py"
PTQ = "quantization/quant_int8_dynamic_eval.py"
QAT = "quantization/qat.py"
COMPILE = "tensor_rewriting/tensor_experiments.py"
ATTENTION = "tensor_rewriting/attention_experiments.py"
CUDA_ONLY = "cuda"
FP8_GPU = "cuda-sm89"
CPU_ONLY = "cpu"
BF16_UNITS = "bf16-units"  # a GPU, or a CPU with AVX-512 BF16 or AMX (device kind "cpu-bf16")


@dataclass(frozen=True)
class Variant:
    name: str                  # its run directory
    script: str                # relative to the repo root
    flags: tuple[str, ...] = ()
    needs: str | None = None   # CUDA_ONLY, FP8_GPU, CPU_ONLY or BF16_UNITS: broken or hopeless elsewhere
    reason: str = ""

    @property
    def technique(self) -> str:
        return self.script.split("/")[0]

    def skip_reason(self, device: str) -> str | None:
        """Why this variant is not run on `device` ("cpu", "cpu-bf16", "cuda" or "cuda-sm89"), or None."""
        cpu = device.startswith("cpu")
        if (self.needs == CUDA_ONLY and cpu or self.needs == FP8_GPU and device != FP8_GPU
                or self.needs == CPU_ONLY and not cpu or self.needs == BF16_UNITS and device == "cpu"):
            return f"{self.reason}; this run is on {device}"
        return None


NO_BF16 = ("bf16 matmuls need a GPU or a CPU with AVX-512 BF16 or AMX; without them PyTorch's bf16 GEMM is a "
           "fallback about 100x slower than fp32 (python -m evaluation.roofline measures both), hours per pass; "
           "run the script itself to measure it anyway")


def _variants() -> list[Variant]:
    v = [Variant("baseline", "baseline/baseline.py")]
    v += [Variant(f"precision-{p}", PRECISION, ("--precision", p), *((BF16_UNITS, NO_BF16) if p == "bfloat16" else ()))
          for p in ("float32", "float16", "bfloat16", "int8", "int4", "float4")]
    v.append(Variant("precision-fp8", PRECISION, ("--precision", "fp8"), FP8_GPU,
                     "fp8 matmuls need a CUDA GPU with compute capability >= 8.9 (Ada/Hopper)"))
    v += [Variant(f"pruning-{s}-{x}", PRUNING, ("--strategy", s, "--sparsity", x))
          for s in ("unstructured", "structured", "block") for x in ("0.3", "0.5", "0.7")]
    v.append(Variant("pruning-2of4-0.5", PRUNING, ("--strategy", "2:4", "--sparsity", "0.5", "--dtype", "bfloat16")))
    v.append(Variant("pruning-unstructured-0.5-finetuned", PRUNING,
                     ("--strategy", "unstructured", "--sparsity", "0.5", "--finetune-steps", "20")))
    v += [Variant("quantization-dynamic-int8", PTQ, ("--scheme", "dynamic-int8")),
          Variant("quantization-dynamic-int8-torchao", PTQ, ("--scheme", "dynamic-int8", "--cpu-backend", "torchao"),
                  CPU_ONLY, "--cpu-backend picks a CPU kernel path; on CUDA dynamic-int8 is torchao's already"),
          Variant("quantization-weight-only-int8", PTQ, ("--scheme", "weight-only-int8")),
          Variant("quantization-weight-only-int4", PTQ, ("--scheme", "weight-only-int4"), CUDA_ONLY,
                  "torchao's int4 weight-only kernels (tinygemm) need CUDA")]
    v += [Variant(f"qat-{w}", QAT, ("--weights", w, "--steps", "10")) for w in ("int4", "int8")]
    v.append(Variant("qat-int4-not-converted", QAT, ("--weights", "int4", "--steps", "10", "--no-convert")))
    for backend, mode in (("eager", "default"), ("aot_eager", "default"), ("inductor", "default"),
                          ("inductor", "reduce-overhead"), ("inductor", "max-autotune"), ("cudagraphs", "default"),
                          ("tvm", "default"), ("tvm", "ansor")):
        cuda = backend == "cudagraphs"
        v.append(Variant(f"tensor-{backend}-{mode}", COMPILE, ("--backend", backend, "--mode", mode),
                         CUDA_ONLY if cuda else None, "CUDA graphs exist on CUDA only" if cuda else ""))
    v.append(Variant("tensor-inductor-default-bfloat16", COMPILE,
                     ("--backend", "inductor", "--mode", "default", "--dtype", "bfloat16"), BF16_UNITS, NO_BF16))
    v += [Variant(f"attention-{k}", ATTENTION, ("--kernel", k), CUDA_ONLY if k in ("sdpa-efficient", "sdpa-cudnn")
                  else None, "PyTorch's CPU build has the math and flash SDPA kernels only")
          for k in ("eager", "sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn")]
    return v


VARIANTS = _variants()
TECHNIQUES = sorted({v.technique for v in VARIANTS})
# The CPU benchmark: the fp32 reference and what a CPU user would pick (a 16-bit cast, dynamic int8, inductor in
# fp32 and bf16, TVM's scheduled default). The bf16 rows run only on CPUs with bf16 matmul units (BF16_UNITS).
SUITES = {"cpu": ["baseline", "precision-bfloat16", "quantization-dynamic-int8", "tensor-inductor-default",
                  "tensor-inductor-default-bfloat16", "tensor-tvm-default"]}


def select(techniques: list[str] | None, only: str | None, suite: str | None = None) -> list[Variant]:
    """The baseline (always: it is every run's reference), then the variants of these techniques / this regex /
    this suite."""
    chosen = [v for v in VARIANTS[1:] if (not techniques or v.technique in techniques)
              and (not only or re.search(only, v.name)) and (not suite or v.name in SUITES[suite])]
    return VARIANTS[:1] + chosen


def device_kind(common: list[str]) -> str:
    """Where the scripts will run: their own --device, else CUDA when present; fp8-capable GPUs and CPUs with
    bf16 matmul units apart."""
    import torch

    from .results import native_bf16_matmul

    asked = next((common[i + 1] for i, a in enumerate(common[:-1]) if a == "--device"),
                 next((a.split("=", 1)[1] for a in common if a.startswith("--device=")), "auto"))
    if asked == "cpu" or not torch.cuda.is_available():
        return "cpu-bf16" if native_bf16_matmul() else "cpu"
    return FP8_GPU if torch.cuda.get_device_capability() >= (8, 9) else "cuda"


def write_error(run_dir: Path, record: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.json").write_text(json.dumps(record, indent=2) + "\n")


def run_variant(v: Variant, out: Path, common: list[str], reference: Path | None, threads: int | None = None) -> dict:
    """One process; its stderr goes to the terminal and its last 40 lines into error.json on failure."""
    cmd = [sys.executable, v.script, *v.flags, *common, "--output-dir", str(out), "--run-name", v.name]
    cmd += ["--reference", str(reference)] if reference else []
    print(f"\n=== {v.name}: {shlex.join(cmd)}", flush=True)
    tail: collections.deque = collections.deque(maxlen=40)
    env = None if threads is None else os.environ | {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True, errors="replace", env=env) as proc:
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line.rstrip("\n").split("\r")[-1])  # progress-bar redraws collapsed
    if proc.returncode == 0:
        return {"name": v.name, "status": "ok"}
    record = {"command": shlex.join(cmd), "returncode": proc.returncode,
              "stderr_tail": "\n".join(x for x in tail if x.strip())}
    write_error(out / v.name, record)
    print(f"=== {v.name} FAILED (exit {proc.returncode}); recorded in {out / v.name / 'error.json'}", flush=True)
    return {"name": v.name, "status": "failed", "returncode": proc.returncode}


def run_matrix(variants: list[Variant], out: Path, common: list[str], resume: bool = False,
               threads: int | None = None) -> list[dict]:
    device = device_kind(common)
    print(f"matrix: {len(variants)} variant(s) on {device}, results in {out}, common options: {shlex.join(common)}")
    outcomes, reference = [], None
    for v in variants:
        run_dir = out / v.name
        (run_dir / "error.json").unlink(missing_ok=True)  # a previous attempt's failure is not this one's
        if run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # ... nor its empty directory, which the script would refuse as an existing run
        why = v.skip_reason(device)
        if resume and (run_dir / "results.json").is_file():
            outcome = {"name": v.name, "status": "kept"}
        elif why:
            write_error(run_dir, {"command": shlex.join([v.script, *v.flags, *common]), "returncode": None,
                                  "skipped": True, "reason": why})
            print(f"\n=== {v.name} SKIPPED (broken or hopeless here): {why}")
            outcome = {"name": v.name, "status": "skipped", "reason": why}
        else:
            outcome = run_variant(v, out, common, reference, threads)
        if v.name == "baseline" and (run_dir / "results.json").is_file():
            reference = run_dir
        outcomes.append(outcome)
    return outcomes


def sweep_yaml(script: str) -> str:
    """A wandb grid sweep over this script's variants: each variant's flags are one value of `flags`, which
    sweeps/run_variant.py splits back into separate flags (a grid over single flags would make invalid pairs)."""
    flags = [shlex.join(v.flags) for v in VARIANTS if v.script == script]
    name = Path(script).stem
    lines = ["# Written by `python -m evaluation.matrix --write-sweeps` from evaluation/matrix.py: edit the list there.",
             f"#   wandb sweep sweeps/{name}.yaml   # once: prints ENTITY/PROJECT/SWEEP_ID",
             "#   wandb agent ENTITY/biogpt-pubmedqa/SWEEP_ID   # on each GPU machine, from the repo root",
             "# Each machine first needs its own reference run:",
             "#   python baseline/baseline.py --model biogpt-large-random --run-name baseline-biogpt-large-random",
             f"name: {name}", "project: biogpt-pubmedqa", f"program: {script}", "method: grid",
             "metric: {name: throughput_qps, goal: maximize}", "parameters:", "  flags:", "    values:"]
    lines += [f'      - "{f}"' for f in flags]
    lines += ["  model: {value: biogpt-large-random}", "  reference: {value: results/baseline-biogpt-large-random}",
              "  wandb: {value: online}", "command:", "  - ${env}", "  - ${interpreter}", "  - sweeps/run_variant.py",
              "  - ${program}", "  - ${args}"]
    return "\n".join(lines) + "\n"


def sweep_scripts() -> list[str]:
    return sorted({v.script for v in VARIANTS[1:]})


def write_sweeps(directory: Path = ROOT / "sweeps") -> list[Path]:
    paths = []
    for script in sweep_scripts():
        path = directory / f"{Path(script).stem}.yaml"
        path.write_text(sweep_yaml(script))
        paths.append(path)
    return paths


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                usage="python -m evaluation.matrix [options] -- [options for every script]")
    p.add_argument("--out", default=None, help="Where the runs and the report go (default: results/matrix-DATE).")
    p.add_argument("--technique", nargs="+", choices=TECHNIQUES, default=None,
                   help="Run only these techniques' variants (the baseline always runs first).")
    p.add_argument("--only", default=None, help="Run only the variants whose name matches this regular expression.")
    p.add_argument("--suite", choices=sorted(SUITES), default=None,
                   help="Run a named set of variants: cpu is the CPU benchmark the README's main table comes from.")
    p.add_argument("--models", nargs="+", default=None, metavar="MODEL",
                   help="Run the variants once per model (each is --model for every script), each model's runs in "
                        "OUT/MODEL; one report and table over all.")
    p.add_argument("--threads", type=int, default=None,
                   help="Pin every run to this many threads (OMP_NUM_THREADS), so runs compare on equal terms.")
    p.add_argument("--resume", action="store_true", help="Keep every run that already has a results.json in OUT.")
    p.add_argument("--list", action="store_true", help="Print the variants with their flags and exit.")
    p.add_argument("--write-sweeps", action="store_true", help="Rewrite sweeps/*.yaml from this list and exit.")
    return p


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args, common = make_parser().parse_args(argv[:split]), argv[split + 1:]
    if args.write_sweeps:
        print("\n".join(f"wrote {p}" for p in write_sweeps()))
        return
    clash = [a for a in common if a.split("=")[0] in ("--output-dir", "--run-name", "--reference")
             + (("--model",) if args.models else ())]
    if clash:
        raise UsageError(f"{', '.join(clash)}: the matrix sets these itself (results go to --out)")
    variants = select(args.technique, args.only, args.suite)
    if args.list:
        print("\n".join(f"{v.name:40s} {v.script} {shlex.join(v.flags)}"
                        + (f"  [needs {v.needs}: {v.reason}]" if v.needs else "") for v in variants))
        return
    out = Path(args.out or f"results/matrix-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        outcomes = [o for model in args.models or [None] for o in run_matrix(
            variants, out / model if model else out, common + (["--model", model] if model else []), args.resume,
            args.threads)]
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"finished runs kept in {out}; rerun with --resume to go on") from None
    from .report import build_report

    report = build_report([out], out, command=shlex.join(["python", "-m", "evaluation.matrix", *argv]))
    failed = [o for o in outcomes if o["status"] == "failed"]
    print(f"\nmatrix: {sum(o['status'] in ('ok', 'kept') for o in outcomes)} run(s) ok, {len(failed)} failed, "
          f"{sum(o['status'] == 'skipped' for o in outcomes)} skipped as broken or hopeless here; "
          f"report: {report['report']}")
    for o in outcomes:
        if o["status"] in ("failed", "skipped"):
            print(f"  {o['status']}: {o['name']}" + (f" ({o['reason']})" if o.get("reason") else ""))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
