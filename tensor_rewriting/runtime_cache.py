"""Exported and quantized runtime artifacts on disk, keyed by everything that changes them, written atomically.

An artifact is a directory (an ONNX model or an OpenVINO IR, with its weights) plus meta.json: what building it
recorded (fusions, conversion counts, build times). A run that finds its key reuses the directory as it is."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Callable

import torch

# Every library whose version can change an exported or quantized graph, or the runtime that reads it.
ARTIFACT_LIBRARIES = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "openvino",
                      "nncf")


def default_cache_dir() -> str:
    return str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "biogpt-pubmedqa" / "runtimes")


def library_versions() -> dict:
    out = {}
    for name in ARTIFACT_LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def model_identity(identity: dict, config, answer_ids: list[int]) -> dict:
    """The run's model identity (name, weights kind, preset seed, architecture) made exact enough for a cache
    key: the whole config, the LM head rows the graph keeps, a local directory's weight files (sizes and times),
    a hub model's revision."""
    exact = identity | {"config": config.to_dict(), "answer_ids": list(answer_ids),
                        "commit": getattr(config, "_commit_hash", None)}
    path = Path(identity["name"])
    if path.is_dir():
        exact["weight_files"] = {p.name: [p.stat().st_size, p.stat().st_mtime_ns]
                                 for p in sorted(path.iterdir()) if p.suffix in (".safetensors", ".bin")}
    return exact


def artifact_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def bytes_on_disk(directory: Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())


def cached_artifact(root: str, name: str, key_parts: dict, build: Callable[[Path], dict]) -> tuple[Path, dict]:
    """(the artifact directory, its record). `build(tmp_dir)` writes the artifact into tmp_dir and returns what
    it wants kept in meta.json; it runs only when ROOT/NAME-KEY does not exist yet, in a child process. The
    directory appears only when complete (built beside it, then renamed), so an interrupted build leaves nothing
    a later run could mistake for an artifact."""
    parts = key_parts | {"libraries": library_versions()}
    final = Path(root).expanduser() / f"{name}-{artifact_key(parts)}"
    reused = (final / "meta.json").is_file()
    if not reused:
        in_child_process(build_into, final, parts, build)
    meta = json.loads((final / "meta.json").read_text())
    return final, {"artifact_dir": str(final), "reused": reused, "bytes_on_disk": bytes_on_disk(final),
                   **{k: v for k, v in meta.items() if k != "key"}}


def building_prefix(final: Path) -> str:
    return f".{final.name}-building-"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def remove_dead_builds(final: Path) -> None:
    """A build killed outright (SIGKILL for memory, a terminal closed) leaves its half-written directory, often the
    model's size: remove those of builders no longer alive. The builder's pid is in the name."""
    prefix = building_prefix(final)
    for stale in final.parent.glob(prefix + "*"):
        pid = stale.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def build_into(final: Path, parts: dict, build: Callable[[Path], dict]) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_builds(final)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f"{building_prefix(final)}{os.getpid()}-"))
    try:
        t0 = time.perf_counter()
        meta = build(tmp)
        meta = {"key": parts, "build_s": time.perf_counter() - t0, **meta}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
        os.replace(tmp, final)
    except OSError:
        if not (final / "meta.json").is_file():
            raise
        # another process finished the same artifact first: its copy is as good as ours
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def in_child_process(fn, *args):
    """fn(*args) in a forked child; its exception, if any, is raised here. An export leaves the process several
    times the model's size in graphs and buffers, some of them held by library caches for good (onnxscript's
    rewrite rules keep their last match, and with it the whole graph and the torch weights): they go with the
    child, so the timed passes' memory is the runtime's. The child shares the model's pages (copy-on-write)."""
    if "fork" not in multiprocessing.get_all_start_methods():
        return fn(*args)
    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def child():
        torch.set_num_threads(1)  # OpenMP's thread pool does not survive a fork: keep torch off it
        try:
            send.send(("ok", fn(*args)))
        except BaseException as e:  # noqa: BLE001  (handed to the parent, which raises it)
            try:
                send.send(("error", e))
            except Exception:  # an exception that does not pickle: its text, then
                send.send(("error", RuntimeError(f"{type(e).__name__}: {e}")))

    process = context.Process(target=child)
    process.start()
    send.close()
    try:
        status, value = receive.recv()
    except EOFError:
        process.join()
        raise RuntimeError(f"the artifact build died (exit code {process.exitcode}; -9: killed, often for memory)")
    process.join()
    if status == "error":
        raise value
    return value
