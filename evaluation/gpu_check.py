"""The first command to run on a CUDA machine: every variant of the matrix on the tiny preset, a few minutes in all,
then a works / fails table with each failure's one-line reason and the environment behind it.

    python -m evaluation.gpu_check --tokenizer-dir ../shared/data/biogpt-large --data-dir ../shared/data/pubmedqa
    python -m evaluation.gpu_check                       # tokenizer and data from the Hugging Face Hub

It writes OUT/gpu_check.md and OUT/gpu_check.json beside the runs (default OUT: results/gpu-check-DATE).
"""
from __future__ import annotations

import argparse
import json
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from .config import UsageError, run_main
from .matrix import run_matrix, variants

PACKAGES = ("torch", "transformers", "bitsandbytes", "torchao", "apache-tvm", "nvidia-ml-py", "cuda-bindings")


def environment() -> dict:
    """GPU, driver, CUDA and the versions of every library a CUDA path depends on."""
    import torch

    env = {"gpu": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
           "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(0)))}
    try:
        import pynvml

        pynvml.nvmlInit()
        env["driver"] = pynvml.nvmlSystemGetDriverVersion()
    except Exception as e:  # noqa: BLE001  (NVML missing is a finding, not a crash)
        env["driver"] = f"unknown ({type(e).__name__})"
    for name in PACKAGES:
        try:
            env[name] = version(name)
        except PackageNotFoundError:
            env[name] = "not installed"
    return env


def reason(run_dir: Path) -> str:
    """The one line that says why a variant failed or was skipped."""
    try:
        err = json.loads((run_dir / "error.json").read_text())
    except (OSError, ValueError):
        return ""
    if err.get("skipped"):
        return err["reason"]
    lines = [x for x in (err.get("stderr_tail") or "").splitlines() if x.strip()]
    errors = [x for x in lines if x.startswith("error:") or "Error" in x]
    return (errors or lines or [f"exit code {err.get('returncode')}"])[-1].strip()[:200]


def table(outcomes: list[dict], out: Path, env: dict) -> str:
    status = {"ok": "works", "kept": "works", "failed": "FAILS", "skipped": "skipped"}
    rows = [f"| {o['name']} | {status[o['status']]} | {reason(out / o['name']) if o['status'] != 'ok' else ''} |"
            for o in outcomes]
    head = "\n".join(f"- {k}: {v}" for k, v in env.items())
    failed = sum(o["status"] == "failed" for o in outcomes)
    return (f"# GPU check, {time.strftime('%Y-%m-%d %H:%M %Z')}\n\n{head}\n\n"
            f"{len(outcomes) - failed} of {len(outcomes)} variants work or are known not to apply; {failed} fail.\n\n"
            "| variant | result | reason |\n|---|---|---|\n" + "\n".join(rows) + "\n")


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Run every variant on the tiny preset on this CUDA machine and say "
                                            "which work.")
    p.add_argument("--out", default=None, help="Where the runs and the table go (default: results/gpu-check-DATE).")
    p.add_argument("--tokenizer-dir", default=None, help="BioGPT-Large's fairseq dict.txt + bpecodes (the tiny preset "
                                                         "has no tokenizer of its own); by default the Hub's.")
    p.add_argument("--data-dir", default=None, help="PubMedQA ori_pqal.json + test_ground_truth.json; by default "
                                                    "the Hub's.")
    p.add_argument("--limit", type=int, default=8, help="Questions per run.")
    return p


def main(argv=None):
    args = make_parser().parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise UsageError("no CUDA device here: the GPU check runs on a CUDA machine (torch "
                         f"{torch.__version__}, CUDA build {torch.version.cuda or 'none'})")
    out = Path(args.out or f"results/gpu-check-{time.strftime('%Y%m%d-%H%M%S')}")
    common = ["--model", "tiny-random", "--limit", str(args.limit), "--batch-size", "4", "--min-passes", "1",
              "--wandb", "disabled", "--device", "cuda"]
    common += ["--tokenizer-dir", args.tokenizer_dir] if args.tokenizer_dir else []
    common += ["--data-dir", args.data_dir] if args.data_dir else []
    env = environment()
    outcomes = run_matrix(list(variants()), out, common)
    text = table(outcomes, out, env)
    (out / "gpu_check.md").write_text(text)
    (out / "gpu_check.json").write_text(json.dumps({"environment": env, "outcomes": outcomes}, indent=2) + "\n")
    print("\n" + text)


if __name__ == "__main__":
    run_main(main)
