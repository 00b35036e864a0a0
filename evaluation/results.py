"""The run's local record: results.json, predictions.json, per-question CSV; written atomically, before wandb."""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from .config import RunConfig, UsageError


def default_run_name(cfg: RunConfig) -> str:
    model = Path(cfg.model.rstrip("/")).name
    return f"{cfg.technique}-{cfg.variant}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_output_dir(cfg: RunConfig) -> Path:
    """Fail before any work when the run directory can't be written or would replace another run; returns it."""
    name = cfg.run_name or default_run_name(cfg)
    if "/" in name or name in (".", ".."):
        raise UsageError(f"--run-name must be a plain name, got {name!r}")
    root = Path(cfg.output_dir)
    if (root / name).exists() and not cfg.overwrite:
        raise UsageError(f"run directory {root / name} already exists; pick another --run-name or pass --overwrite")
    created = [d for d in (root, *root.parents) if not d.exists()]  # deepest first
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root):
            pass
    except OSError as e:
        raise UsageError(f"output directory not writable: {root} ({e.strerror or e})")
    finally:
        for d in created:  # checked, not kept: the run makes them when it has something to write
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
    return root / name


def environment(device: torch.device) -> dict:
    import transformers

    env = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
           "transformers": transformers.__version__, "cuda": torch.version.cuda, "device_type": device.type,
           "device_name": cpu_name(), "driver": None,
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cpu_isa": cpu_isa(),
           "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "git_commit": git_commit(),
           "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "packages": package_versions()}
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
        env["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        try:
            import pynvml

            pynvml.nvmlInit()
            env["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception as e:
            env["driver"] = f"unknown ({type(e).__name__})"
    return env


def package_versions() -> dict:
    """The versions of the libraries a technique's kernels come from (None: not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torchao", "bitsandbytes", "apache-tvm", "accelerate", "onnx", "onnxscript", "onnxruntime",
                 "onnxruntime-gpu", "openvino", "nncf"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def cpu_isa() -> dict:
    """The instruction sets CPU speed depends on (what torch dispatches to, and the 16-bit/int8 matmul units): the
    same technique ranks differently on an AVX2-only CPU and on one with AVX-512 BF16/VNNI or AMX."""
    flags = {name: bool(getattr(torch.cpu, f"_is_{name}_supported", lambda: None)())
             for name in ("avx2", "avx512", "avx512_bf16", "vnni", "amx_tile", "amx_fp16")}
    return {"capability": torch.backends.cpu.get_cpu_capability(), **flags}


def native_bf16_matmul() -> bool:
    """Whether this CPU has bf16 matmul instructions; without them PyTorch's bf16 GEMM is a slow fallback."""
    isa = cpu_isa()
    return isa["avx512_bf16"] or isa["amx_tile"]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def write_run(run_dir: Path, results: dict, rows: list[dict]) -> Path:
    """Write the three files into a temporary sibling directory, then move it into place in one step."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", dir=run_dir.parent))
    try:
        (tmp / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        predictions = {r["pmid"]: r["prediction"] for r in rows}
        (tmp / "predictions.json").write_text(json.dumps(predictions, indent=2) + "\n")
        (tmp / "per_question.csv").write_text(_csv_text(rows))
        tmp.chmod(0o755)  # mkdtemp makes it private; a results directory is for others to read
        if run_dir.exists():
            shutil.rmtree(run_dir)
        os.replace(tmp, run_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return run_dir


def read_per_question(run_dir: Path) -> dict[str, dict]:
    """PMID -> {"prediction", "gold", "logits"} from a run directory's per-question CSV."""
    out = {}
    with open(run_dir / "per_question.csv", newline="") as f:
        for r in csv.DictReader(f):
            logits = [r.get("logit_yes"), r.get("logit_no"), r.get("logit_maybe")]
            out[r["pmid"]] = {"prediction": r["prediction"], "gold": r.get("gold"),
                              "logits": [float(x) for x in logits] if all(logits) else None}
    return out
