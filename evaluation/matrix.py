"""The one command that runs every variant of every technique, the baseline first, then the report.

Each technique folder declares its variants in FOLDER/variants.py; `variants()` collects them. Each variant runs
as its own process (`python -m MODULE`: its own peak memory, fresh compiler caches) with --paired: its timed
passes alternate with an fp32-eager reference's, so every speed-up is taken from passes timed side by side (with
--min-passes 0, against the baseline run instead); a failed command leaves RUN/error.json. A variant its script
would refuse on this machine (the same checks the script runs before loading anything) or whose pass would take
hours here is not run and leaves RUN/error.json with "skipped": true and the reason. The report
(evaluation.report) is the table. The wandb sweeps in sweeps/ are written from the same list (`--write-sweeps`).

    python -m evaluation.matrix --out results/matrix-tiny -- --model tiny-random \
        --tokenizer-dir ../shared/data/biogpt-large --data-dir ../shared/data/pubmedqa --limit 20 --wandb disabled
    python -m evaluation.matrix --technique quantization --out results/quant -- --model biogpt-base-random ...
"""
from __future__ import annotations

import argparse
import collections
import functools
import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import UsageError, parse_config, run_main

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Variant:
    """One run of a technique script: its run directory's name, the script's options class (whose module is the
    script, run as `python -m MODULE`) and the flags that pick the variant. Each technique folder declares its own
    in FOLDER/variants.py; `variants()` collects them."""
    name: str
    options: type
    flags: tuple[str, ...] = ()
    suites: tuple[str, ...] = ()  # named sets the variant belongs to (--suite), e.g. "cpu"

    @property
    def module(self) -> str:
        return self.options.__module__

    @property
    def technique(self) -> str:
        return self.module.split(".")[0]


@functools.cache
def variants() -> tuple[Variant, ...]:
    """Every technique folder's VARIANTS (FOLDER/variants.py), the baseline first: found on disk, so that a new
    technique folder with a variants.py joins the matrix, the sweeps and the report without an edit here."""
    folders = sorted(d.name for d in ROOT.iterdir() if (d / "__init__.py").is_file() and (d / "variants.py").is_file())
    found = [v for f in folders for v in importlib.import_module(f"{f}.variants").VARIANTS]
    return tuple(sorted(found, key=lambda v: v.technique != "baseline"))


def techniques() -> list[str]:
    return sorted({v.technique for v in variants()})


def suites() -> list[str]:
    return sorted({s for v in variants() for s in v.suites})


def select(techniques: list[str] | None, only: str | None, suite: str | None = None) -> list[Variant]:
    """The baseline (always: it is every run's reference), then the variants of these techniques / this regex /
    this suite."""
    baseline, *rest = variants()
    chosen = [v for v in rest if (not techniques or v.technique in techniques)
              and (not only or re.search(only, v.name)) and (not suite or suite in v.suites)]
    return [baseline, *chosen]


MAX_PASS_S = 3600.0  # a pass estimated longer than this at the machine's own matmul peak is not worth a matrix slot
MEAN_PROMPT_TOKENS = 326  # PubMedQA test prompts with BioGPT-Large's tokenizer and learned prompt, mean


def hopeless(cfg, device) -> str | None:
    """Why a run would take too long here to be worth running, from its work: the forward FLOPs of one pass at this
    machine's measured dense-matmul peak in the run's dtype (an optimistic bound). bf16 on a CPU without bf16
    matmul units runs ~100x below fp32 and is skipped this way on a large model, yet runs on a small one."""
    from .harness import forward_flops
    from .modeling import DTYPES, PRESETS, load_config
    from .roofline import matmul_peak_tflops

    if cfg.model not in PRESETS and not Path(cfg.model).is_dir():
        return None  # a hub id: no look-up from here; the run itself says what is wrong
    config = load_config(cfg)
    questions = min(cfg.limit or 500, 500)
    flops = forward_flops(config, [MEAN_PROMPT_TOKENS] * questions, questions)
    peak = matmul_peak_tflops(device, DTYPES[cfg.dtype])["tflops"] * 1e12
    if flops / peak <= MAX_PASS_S:
        return None
    return (f"an estimated {flops / peak / 3600:.1f} h per pass ({flops / 1e12:.0f} TFLOP at this machine's measured "
            f"{cfg.dtype} matmul peak of {peak / 1e9:.1f} GFLOP/s, python -m evaluation.roofline); run the script "
            "itself to measure it anyway")


def skip_reason(v: Variant, common: list[str]) -> str | None:
    """Why this variant is not run with these options on this machine: what its script would refuse before any
    loading (Options.check, the attention and device checks), or a pass too long to be worth it; None: run it."""
    from .runner import check_run

    try:
        cfg = parse_config(v.technique, v.options, [*v.flags, *common])
        return hopeless(cfg, check_run(cfg))
    except UsageError as e:
        return str(e)


def write_error(run_dir: Path, record: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.json").write_text(json.dumps(record, indent=2) + "\n")


def comparison_flags(v: Variant, common: list[str], baseline: Path | None) -> list[str]:
    """How a variant is compared: --paired (its passes alternate with the fp32-eager reference's, so its speed-up
    holds whatever the machine's drift); with --min-passes 0 (no timed passes to pair) against the baseline run."""
    if v.technique == "baseline":
        return []
    accuracy_only = "--min-passes=0" in common or any(a == "--min-passes" and b == "0"
                                                      for a, b in zip(common, common[1:]))
    if not accuracy_only:
        return ["--paired"]
    return ["--reference", str(baseline)] if baseline else []


def run_variant(v: Variant, out: Path, common: list[str], baseline: Path | None, threads: int | None = None) -> dict:
    """One process; its stderr goes to the terminal and its last 40 lines into error.json on failure."""
    cmd = [sys.executable, "-m", v.module, *v.flags, *common, "--output-dir", str(out), "--run-name", v.name]
    cmd += comparison_flags(v, common, baseline)
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
    print(f"matrix: {len(variants)} variant(s), results in {out}, common options: {shlex.join(common)}")
    outcomes, baseline = [], None
    for v in variants:
        run_dir = out / v.name
        (run_dir / "error.json").unlink(missing_ok=True)  # a previous attempt's failure is not this one's
        if run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # ... nor its empty directory, which the script would refuse as an existing run
        if resume and (run_dir / "results.json").is_file():
            outcome = {"name": v.name, "status": "kept"}
        elif why := skip_reason(v, common):
            write_error(run_dir, {"command": shlex.join(["python", "-m", v.module, *v.flags, *common]),
                                  "returncode": None, "skipped": True, "reason": why})
            print(f"\n=== {v.name} SKIPPED (broken or hopeless here): {why}")
            outcome = {"name": v.name, "status": "skipped", "reason": why}
        else:
            outcome = run_variant(v, out, common, baseline, threads)
        if v.technique == "baseline" and (run_dir / "results.json").is_file():
            baseline = run_dir
        outcomes.append(outcome)
    return outcomes


def sweep_yaml(module: str) -> str:
    """A wandb grid sweep over this script's variants: each variant's flags are one value of `flags`, which
    sweeps/run_variant.py splits back into separate flags (a grid over single flags would make invalid pairs)."""
    flags = [shlex.join(v.flags) for v in variants() if v.module == module]
    name = module.rsplit(".", 1)[-1]
    lines = [f"# Written by `python -m evaluation.matrix --write-sweeps` from {module.split('.')[0]}/variants.py: "
             "edit the list there.",
             f"#   wandb sweep sweeps/{name}.yaml   # once: prints ENTITY/PROJECT/SWEEP_ID",
             "#   wandb agent ENTITY/biogpt-pubmedqa/SWEEP_ID   # on each GPU machine, from the repo root",
             "# Every run times its own fp32-eager reference (--paired), so the speed-ups hold across machines.",
             f"name: {name}", "project: biogpt-pubmedqa", f"program: {module}", "method: grid",
             "metric: {name: throughput_qps, goal: maximize}", "parameters:", "  flags:", "    values:"]
    lines += [f'      - "{f}"' for f in flags]
    lines += ["  model: {value: biogpt-large-random}", "  wandb: {value: online}", "command:", "  - ${env}",
              "  - ${interpreter}", "  - sweeps/run_variant.py", "  - ${program}", "  - ${args}", "  - --paired"]
    return "\n".join(lines) + "\n"


def sweep_modules() -> list[str]:
    return sorted({v.module for v in variants() if v.technique != "baseline"})


def write_sweeps(directory: Path = ROOT / "sweeps") -> list[Path]:
    paths = []
    for module in sweep_modules():
        path = directory / f"{module.rsplit('.', 1)[-1]}.yaml"
        path.write_text(sweep_yaml(module))
        paths.append(path)
    return paths


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                usage="python -m evaluation.matrix [options] -- [options for every script]")
    p.add_argument("--out", default=None, help="Where the runs and the report go (default: results/matrix-DATE).")
    p.add_argument("--technique", nargs="+", choices=techniques(), default=None,
                   help="Run only these techniques' variants (the baseline always runs first).")
    p.add_argument("--only", default=None, help="Run only the variants whose name matches this regular expression.")
    p.add_argument("--suite", choices=suites(), default=None,
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
    clash = [a for a in common if a.split("=")[0] in ("--output-dir", "--run-name", "--reference", "--paired")
             + (("--model",) if args.models else ())]
    if clash:
        raise UsageError(f"{', '.join(clash)}: the matrix sets these itself (results go to --out)")
    chosen = select(args.technique, args.only, args.suite)
    if args.list:
        print("\n".join(f"{v.name:40s} python -m {v.module} {shlex.join(v.flags)}"
                         + (f"  [suites: {', '.join(v.suites)}]" if v.suites else "") for v in chosen))
        return
    out = Path(args.out or f"results/matrix-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        outcomes = [o for model in args.models or [None] for o in run_matrix(
            chosen, out / model if model else out, common + (["--model", model] if model else []), args.resume,
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
