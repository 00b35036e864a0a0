"""The run's local record: results.json, predictions.json, per-question CSV; written atomically, before wandb."""
from __future__ import annotations

import csv
import fcntl
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


TEMP_NAME_EXTRA = 10  # write_run's temporary sibling ".NAME." + mkdtemp's 8 characters; the lock is ".NAME.lock"
_claims: dict[Path, tuple[int, list[Path]]] = {}  # run dir -> (its lock's descriptor, output dirs the run created)


def check_output_dir(cfg: RunConfig) -> Path:
    """Fail before any work when the run directory can't be written, would replace another run, or is being
    written by a run in progress; returns it, claimed for this run until release_run_dirs()."""
    name = cfg.run_name or default_run_name(cfg)
    if "/" in name or name in (".", ".."):
        raise UsageError(f"--run-name must be a plain name, got {name!r}")
    root = Path(cfg.output_dir)
    check_name_length(root, name)
    created = [d for d in (root, *root.parents) if not d.exists()]  # deepest first
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root):
            pass
        _claims[root / name] = (claim_run_dir(root / name), created)
    except (OSError, UsageError) as e:
        remove_empty(created)  # checked, not kept: the run makes them when it has something to write
        if isinstance(e, UsageError):
            raise
        raise UsageError(f"output directory not writable: {root} ({e.strerror or e})")
    if (root / name).exists() and not cfg.overwrite:  # asked only now that no other run can be writing it
        release_run_dir(root / name)
        raise UsageError(f"run directory {root / name} already exists; pick another --run-name or pass --overwrite")
    return root / name


def check_name_length(root: Path, name: str) -> None:
    """The run's files are named after it: a name the file system can't hold is refused before any work."""
    existing = next(d for d in (root, *root.parents) if d.exists())
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if len(os.fsencode(name)) + TEMP_NAME_EXTRA > limit:
        raise UsageError(f"--run-name is {len(os.fsencode(name))} bytes long; file names in {existing} hold "
                         f"{limit}, so a run name may have at most {limit - TEMP_NAME_EXTRA}")


def claim_run_dir(run_dir: Path) -> int:
    """An exclusive lock on .NAME.lock beside the run directory, held until the run ends: a second run of the same
    name (with --overwrite too) is refused while this one goes on. The kernel drops the lock when its process dies,
    so a crashed run's leftover lock file blocks nothing. Returns the lock's file descriptor."""
    lock = lock_path(run_dir)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UsageError(f"run directory {run_dir} is being written by a run in progress (pid {holder}); pick "
                             "another --run-name or wait for that run to end")
        try:
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder ended and removed it between our open and our lock: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def lock_path(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.lock"


def release_run_dir(run_dir: Path) -> None:
    """End this process's claim on `run_dir`: its lock file goes, and so do the output directories the run
    created if nothing was written into them."""
    fd, created = _claims.pop(run_dir)
    lock_path(run_dir).unlink(missing_ok=True)  # before unlocking: see claim_run_dir
    os.close(fd)
    remove_empty(created)


def release_run_dirs() -> None:
    """End every claim of this process (its run finished or failed)."""
    for run_dir in list(_claims):
        release_run_dir(run_dir)


def remove_empty(directories: list[Path]) -> None:
    for d in directories:  # deepest first
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def share_files(directory: Path) -> None:
    """Files a technique saved into the run directory, readable by others as the directory is (safetensors
    writes its files 0600)."""
    for path in directory.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


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
    """Write the three files into a temporary sibling directory, then move it into place in one step. A write
    that fails (disk full, quota) leaves nothing behind and is one line."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", dir=run_dir.parent))
        (tmp / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        predictions = {r["pmid"]: r["prediction"] for r in rows}
        (tmp / "predictions.json").write_text(json.dumps(predictions, indent=2) + "\n")
        (tmp / "per_question.csv").write_text(_csv_text(rows))
        tmp.chmod(0o755)  # mkdtemp makes it private; a results directory is for others to read
        if run_dir.exists():
            shutil.rmtree(run_dir)
        os.replace(tmp, run_dir)
    except BaseException as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise UsageError(f"could not write the results into {run_dir.parent} ({e.strerror or e}): this run's "
                             f"results ({len(rows)} questions, every figure) are lost, nothing was written") from None
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
