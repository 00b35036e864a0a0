"""The machine's dense-matmul peak per dtype, measured once and cached, so every run can say what fraction of
it its forward passes achieved (achieved_tflops / peak): the same figure on a CPU and on a GPU."""
from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path

import torch

CACHE = Path(os.environ.get("BIOGPT_BENCH_CACHE", Path.home() / ".cache" / "biogpt-pubmedqa")) / "matmul_peak.json"
SIDE = {"cpu": 1024, "cuda": 8192}  # large enough to be compute-bound, small enough to time in about a second


def machine_key(device: torch.device, dtype: torch.dtype) -> str:
    """Which peak this is: the device model, the threads torch uses, torch's version and the dtype."""
    from .results import cpu_name

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return hashlib.sha1(json.dumps([name, torch.get_num_threads(), torch.__version__, str(dtype)]).encode()
                        ).hexdigest()[:16]


def measure_peak_tflops(device: torch.device, dtype: torch.dtype, min_s: float = 0.5) -> float:
    """Best TFLOP/s of a square torch.mm over repeated calls after a warm-up (the best call, not the mean: a peak)."""
    n = SIDE[device.type]
    if dtype == torch.int8 and device.type == "cpu":  # fbgemm/oneDNN's u8 x s8 GEMM: torch.ao's dynamic int8
        with warnings.catch_warnings():  # torch.ao's quantized tensors are deprecated; they are what it runs
            warnings.simplefilter("ignore")
            w = torch.ops.quantized.linear_prepack(torch.quantize_per_tensor(torch.randn(n, n), 0.1, 0, torch.qint8),
                                                   None)
            a, b = torch.quantize_per_tensor(torch.randn(n, n), 0.1, 128, torch.quint8), w
        mm = lambda x, packed: torch.ops.quantized.linear(x, packed, 1.0, 0)  # noqa: E731
    elif dtype == torch.int8:  # int8 x int8 -> int32 (cuBLAS)
        a, b = (torch.randint(-128, 128, (n, n), dtype=dtype, device=device) for _ in range(2))
        mm = torch._int_mm
    else:
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        mm = torch.mm
    best, start = float("inf"), time.perf_counter()
    mm(a, b)  # warm-up: kernel selection, first-touch allocation
    while time.perf_counter() - start < min_s or best == float("inf"):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, at_least: float = 0.0) -> dict:
    """{"tflops", "source": "measured"|"cache", "side"}: cached per machine and dtype under CACHE. A cached peak
    below `at_least` (a run went faster than it) was measured while the machine was busy: measured again, and
    the higher figure kept."""
    key = machine_key(device, dtype)
    try:
        cache = json.loads(CACHE.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache and cache[key]["tflops"] >= at_least:
        return cache[key] | {"source": "cache"}
    measured = measure_peak_tflops(device, dtype)
    entry = {"tflops": max(measured, cache.get(key, {}).get("tflops", 0.0)), "side": SIDE[device.type],
             "dtype": str(dtype), "date": time.strftime("%Y-%m-%d")}
    try:
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        CACHE.write_text(json.dumps(cache | {key: entry}, indent=2) + "\n")
    except OSError:  # a read-only home: measure again next time
        pass
    return entry | {"source": "measured"}


def roofline(achieved_tflops: float, device: torch.device, dtype: torch.dtype) -> dict:
    """The run's achieved TFLOP/s as a fraction of this machine's dense-matmul peak in the run's compute dtype."""
    peak = matmul_peak_tflops(device, dtype, at_least=achieved_tflops)
    return {"matmul_peak_tflops": peak["tflops"], "matmul_peak_source": peak["source"],
            "roofline_fraction": achieved_tflops / peak["tflops"] if peak["tflops"] else None}


if __name__ == "__main__":  # the peaks of this machine, e.g. to see why a dtype is slow on this CPU
    from .results import cpu_isa, cpu_name

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{cpu_name()} {cpu_isa()}"
    print(f"{name}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for dt in (torch.float32, torch.bfloat16, torch.float16, torch.int8):
        try:
            op = "torch.mm" if dt != torch.int8 else "quantized.linear" if dev.type == "cpu" else "torch._int_mm"
            print(f"  {str(dt):15s} {measure_peak_tflops(dev, dt) * 1e3:8.1f} G{'OP' if dt == torch.int8 else 'FLOP'}/s"
                  f"  ({SIDE[dev.type]}^3 {op}, the best call)")
        except RuntimeError as e:
            print(f"  {str(dt):15s} not measured: {str(e).splitlines()[0]}")
