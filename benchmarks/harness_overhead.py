"""The bench's timed pass against a plain PyTorch loop over exactly the same batches: how much the harness adds.

Every speed-up is a ratio to the baseline's pass, so harness overhead in it would overstate every speed-up. Both
contenders run the same token-budget batches with the same 4D mask, positions and LM head at each row's last
position; the plain loop is written here from scratch, the harness pass is evaluation.harness's (the sampler
thread on, as in a timed phase). Default: in one process, interleaved round by round; --processes: each round a
fresh plain-loop process (torch and transformers only) against a fresh `python -m baseline.baseline` run, so that
whatever the bench's process adds (imports, threads, allocator state) shows too.

    python -m benchmarks.harness_overhead --model biogpt-base-random --tokenizer-dir ../shared/data/biogpt-large \
        --data-dir ../shared/data/pubmedqa --limit 20 --batch-size 16 --rounds 4 --out results/overhead.json
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import evaluation  # noqa: F401  first: a Ctrl-C while torch imports is then one line, not a traceback
import torch

from benchmarks import interleaved, paired_speedup, write_json
from benchmarks.plain_loop import plain_pass
from evaluation import PRESETS, Options, UsageError, load_model, option, parse_config, run_main
from evaluation.harness import pass_runner
from evaluation.resolve import resolve
from evaluation.results import environment
from evaluation.telemetry import Clock, Sampler, latency_stats

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")

@dataclass(frozen=True)
class OverheadOptions(Options):
    rounds: int = option(4, "Rounds; each times both contenders once (in turn, the first alternating).")
    processes: bool = option(False, "Each contender in fresh processes each round (the plain loop alone, the bench "
                                    "as python -m baseline.baseline), instead of both in this one.")
    out: str | None = option(None, "Write the timings as JSON here.")

    def __post_init__(self):
        if self.rounds < 2:
            raise UsageError(f"--rounds must be at least 2 (an interval needs two paired rounds), got {self.rounds}")

    @property
    def variant(self) -> str:
        return "harness-overhead"


def in_process(cfg, run) -> dict[str, list[float]]:
    model = load_model(cfg, CPU)
    one_pass = pass_runner(model, cfg, run)
    tensors = [(b.input_ids, b.attention_mask, b.position_ids, b.last_index) for b in run.prompts.batches]

    def harness_pass():
        with Sampler(CPU):
            one_pass()

    calls = {"plain": lambda: plain_pass(model, tensors, run.prompts.answer_ids), "harness": harness_pass}
    for call in calls.values():
        call()
    return {k: [ms / 1e3 for ms in v] for k, v in interleaved(calls, cfg.options.rounds, Clock(CPU)).items()}


def baseline_argv(cfg) -> list[str]:
    """The shared options of this benchmark's command line, for the baseline runs it starts."""
    argv = ["--model", cfg.model, "--batch-size", str(cfg.batch_size), "--seed", str(cfg.seed), "--prompt", cfg.prompt]
    for flag, value in (("--tokenizer-dir", cfg.tokenizer_dir), ("--data-dir", cfg.data_dir), ("--limit", cfg.limit)):
        argv += [flag, str(value)] if value is not None else []
    return argv


def in_processes(cfg, run) -> dict[str, list[float]]:
    """Per round: a plain-loop process and a baseline run, each warmed up then timed over 3 passes (medians)."""
    if cfg.model not in PRESETS:
        raise UsageError("--processes builds the plain loop's model from a preset: pass --model tiny-random, "
                         "biogpt-base-random or biogpt-large-random")
    work = Path(tempfile.mkdtemp(prefix="harness-overhead-"))
    torch.save({"batches": [(b.input_ids, b.attention_mask, b.position_ids, b.last_index) for b in run.prompts.batches],
                "answer_ids": run.prompts.answer_ids}, work / "batches.pt")
    spec = json.dumps({"preset": PRESETS[cfg.model], "seed": cfg.seed, "batches": str(work / "batches.pt"), "passes": 3})
    times: dict[str, list[float]] = {"plain": [], "harness": []}

    def plain():
        out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "plain_loop.py"), spec], capture_output=True,
                             text=True, check=True)
        return sorted(json.loads(out.stdout.strip().splitlines()[-1]))[1]

    def bench(k):
        name = f"round-{k}"
        subprocess.run([sys.executable, "-m", "baseline.baseline", *baseline_argv(cfg), "--min-passes", "3",
                        "--wandb", "disabled",
                        "--output-dir", str(work), "--run-name", name], cwd=ROOT, capture_output=True, check=True)
        return json.loads((work / name / "results.json").read_text())["metrics"]["pass_wall_s_median"]

    for k in range(cfg.options.rounds):
        for name in (("plain", "harness") if k % 2 == 0 else ("harness", "plain")):
            times[name].append(plain() if name == "plain" else bench(k))
        print(f"round {k + 1}: plain {times['plain'][-1]:.2f} s, bench {times['harness'][-1]:.2f} s", flush=True)
    return times


def main():
    cfg = parse_config("baseline", OverheadOptions, description=__doc__.splitlines()[0])
    if cfg.device == "cuda":
        raise UsageError("harness_overhead compares CPU passes: --device cuda is not supported")
    run = resolve(cfg, CPU, Path(tempfile.gettempdir()) / "unused")  # the batches every pass of a run times
    with torch.inference_mode(False):
        times = in_processes(cfg, run) if cfg.options.processes else in_process(cfg, run)
    ratio = paired_speedup(times["harness"], times["plain"], "--rounds")  # > 1: the harness pass is slower
    report = {"config": cfg.to_dict(), "environment": environment(CPU), "model": run.identity,
              "mode": "processes" if cfg.options.processes else "one process",
              "pass_s": {k: latency_stats(v) | {"samples": v} for k, v in times.items()},
              "harness_over_plain": ratio}
    interval = f" [{ratio['ci_low']:.3f}, {ratio['ci_high']:.3f}]" if ratio["ci_low"] is not None else ""
    print(f"{cfg.model}, {len(run.questions)} questions, {report['mode']}: plain loop "
          f"{report['pass_s']['plain']['p50']:.2f} s, harness pass {report['pass_s']['harness']['p50']:.2f} s per "
          f"pass; harness / plain {ratio['value']:.3f}{interval} over {ratio['n_rounds']} paired rounds")
    if cfg.options.out:
        print(f"wrote {write_json(cfg.options.out, report)}")


if __name__ == "__main__":
    run_main(main)
