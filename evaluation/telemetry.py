"""Clocks, latency statistics, and the NVML (or CPU) sampler that runs during the timed phase only."""
from __future__ import annotations

import contextlib
import statistics
import threading
import time

import psutil
import torch


class Clock:
    """Marks on the device timeline: CUDA events on a GPU (no host sync in the loop), perf_counter on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def ms(self, start, end) -> float:
        """Elapsed milliseconds; call after sync()."""
        return start.elapsed_time(end) if self.cuda else (end - start) * 1e3

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize()


def latency_stats(samples_ms: list[float]) -> dict:
    if not samples_ms:
        return {"n": 0, "mean": None, "p50": None, "p90": None, "p95": None, "p99": None, "stdev": None}
    q = statistics.quantiles(samples_ms, n=100, method="inclusive") if len(samples_ms) > 1 else samples_ms * 99
    return {"n": len(samples_ms), "mean": statistics.fmean(samples_ms), "p50": statistics.median(samples_ms),
            "p90": q[89], "p95": q[94], "p99": q[98],
            "stdev": statistics.stdev(samples_ms) if len(samples_ms) > 1 else 0.0,
            "min": min(samples_ms), "max": max(samples_ms)}


def _nvml_handle(device: torch.device):
    import pynvml

    pynvml.nvmlInit()
    index = device.index if device.index is not None else torch.cuda.current_device()
    try:  # map the CUDA ordinal to NVML by PCI bus id; CUDA_VISIBLE_DEVICES may reorder them
        p = torch.cuda.get_device_properties(index)
        bus = f"{p.pci_domain_id:08X}:{p.pci_bus_id:02X}:{p.pci_device_id:02X}.0"
        return pynvml.nvmlDeviceGetHandleByPciBusId(bus)
    except Exception:
        return pynvml.nvmlDeviceGetHandleByIndex(index)


def _utilisation(nv, h) -> dict:
    u = nv.nvmlDeviceGetUtilizationRates(h)
    return {"gpu_util": u.gpu, "mem_util": u.memory}


# NVML sensors sampled during the timed phase, each read on its own: a GPU (or a MIG slice) that lacks one
# (utilisation under MIG raises NVMLError_NotSupported) must not cost us the others. name -> (pynvml, handle) -> fields
SENSORS = {
    "gpu_util": _utilisation,
    "mem_used": lambda nv, h: {"mem_used_mib": nv.nvmlDeviceGetMemoryInfo(h).used / 2**20},
    "power": lambda nv, h: {"power_w": nv.nvmlDeviceGetPowerUsage(h) / 1e3},
    "temp": lambda nv, h: {"temp_c": nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)},
    "sm_clock": lambda nv, h: {"sm_clock_mhz": nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM)},
}


def _why(e: Exception) -> str:
    return f"{type(e).__name__}: {e}"


class Sampler:
    """Samples GPU (NVML) or process CPU/RSS at ~10 Hz in a background thread; never ends a run.

    On a GPU each sensor is read on its own: one that fails is recorded in `failed` (name -> reason) once and
    skipped afterwards, the others keep sampling. Energy comes from NVML's total-energy counter read at enter
    and exit, whatever the samples; integrated sampled power only when that counter is unavailable.

    `paused()`: a stretch that is not this run's (a paired reference's pass on the same GPU) is left out of the
    samples and of the energy."""

    def __init__(self, device: torch.device, interval_s: float = 0.1):
        self.interval_s, self.samples, self.error = interval_s, [], None
        self.handle = None
        self.segments: list[tuple] = []  # (energy counter at the start, at the end) of each sampled stretch
        self.failed: dict[str, str] = {}
        self.process = psutil.Process()
        self._stop, self._active = threading.Event(), threading.Event()
        if device.type != "cuda":
            self.error = "NVML not used: the run is on the CPU"
            return
        try:
            self.handle = _nvml_handle(device)
        except Exception as e:
            self.error = f"NVML unavailable: {_why(e)}"

    def _read_gpu(self) -> dict:
        import pynvml

        sample = {"t": time.perf_counter()}
        for name, read in SENSORS.items():
            if name in self.failed:
                continue
            try:
                sample.update(read(pynvml, self.handle))
            except Exception as e:  # e.g. NVMLError_NotSupported: skip this sensor from now on
                self.failed[name] = _why(e)
        return sample

    def _read_cpu(self) -> dict:
        return {"t": time.perf_counter(), "rss_mib": self.process.memory_info().rss / 2**20,
                "cpu_percent": self.process.cpu_percent(None)}

    def _loop(self):
        gpu = self.handle is not None
        while not self._stop.is_set():
            if not self._active.is_set():
                self._stop.wait(self.interval_s / 10)
                continue
            try:
                self.samples.append((self._read_gpu() if gpu else self._read_cpu()) | {"segment": len(self.segments)})
            except Exception as e:  # the CPU figures failing (psutil): keep what we have
                self.error = f"sampling stopped: {_why(e)}"
                return
            if gpu and len(self.failed) == len(SENSORS):
                return  # nothing left to read; energy still comes from the counter
            self._stop.wait(self.interval_s)

    def _energy_mj(self):
        import pynvml

        try:
            return pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except Exception as e:  # e.g. before Volta, or on a MIG slice: fall back to integrated power
            self.failed.setdefault("energy", _why(e))
            return None

    def _resume(self):
        self._start = self._energy_mj() if self.handle is not None else None
        self.process.cpu_percent(None)
        self._active.set()

    def _pause(self):
        self._active.clear()
        self.segments.append((self._start, self._energy_mj() if self.handle is not None else None))

    @contextlib.contextmanager
    def paused(self):
        self._pause()
        try:
            yield
        finally:
            self._resume()

    def __enter__(self):
        self._resume()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._pause()
        self._stop.set()
        self.thread.join()

    def _energy(self) -> tuple[float | None, str | None]:
        """(joules, source): the counter's differences over the sampled stretches, else sampled power integrated
        over time within each stretch, else (None, None)."""
        if self.segments and all(a is not None and b is not None for a, b in self.segments):
            return sum(b - a for a, b in self.segments) / 1e3, "nvml_total_energy_counter"
        power = [x for x in self.samples if "power_w" in x]
        pairs = [(a, b) for a, b in zip(power, power[1:]) if a["segment"] == b["segment"]]
        if not pairs:
            return None, None
        return sum((b["t"] - a["t"]) * (a["power_w"] + b["power_w"]) / 2 for a, b in pairs), "integrated_power"

    def summary(self, questions: int) -> dict:
        """GPU figures (null with a reason without NVML, or where that sensor failed) and CPU figures."""
        s, out = self.samples, {"samples": len(self.samples), "nvml_error": None, "failed_sensors": {}}
        gpu_keys = ["gpu_util_mean", "mem_util_mean", "gpu_mem_used_peak_mib", "power_w_mean", "power_w_max",
                    "energy_j", "energy_j_per_question", "energy_source", "temp_c_mean", "temp_c_max",
                    "sm_clock_mhz_mean"]
        if self.handle is None:
            out.update(dict.fromkeys(gpu_keys))
            out["nvml_error"] = self.error or "no NVML samples were taken"
            out["rss_peak_mib"] = max((x.get("rss_mib", 0) for x in s), default=self.process.memory_info().rss / 2**20)
            out["cpu_util_mean"] = statistics.fmean(x["cpu_percent"] for x in s[1:]) if len(s) > 1 else None
            return out

        def values(k):
            return [x[k] for x in s if k in x]

        def mean(k):
            v = values(k)
            return statistics.fmean(v) if v else None

        def peak(k):
            return max(values(k), default=None)

        energy, source = self._energy()
        out.update(gpu_util_mean=mean("gpu_util"), mem_util_mean=mean("mem_util"),
                   gpu_mem_used_peak_mib=peak("mem_used_mib"), power_w_mean=mean("power_w"),
                   power_w_max=peak("power_w"), energy_j=energy,
                   energy_j_per_question=energy / questions if energy is not None and questions else None,
                   energy_source=source, temp_c_mean=mean("temp_c"), temp_c_max=peak("temp_c"),
                   sm_clock_mhz_mean=mean("sm_clock_mhz"), failed_sensors=dict(self.failed))
        # one line for readers that only show nvml_error (the report's energy note): which sensors failed and why
        out["nvml_error"] = "; ".join(f"{k}: {v}" for k, v in self.failed.items()) or self.error
        out["rss_peak_mib"] = self.process.memory_info().rss / 2**20
        out["cpu_util_mean"] = None
        return out


TORCH_PEAK_ALLOCATED, NVML_PEAK_USED, RSS_PEAK = "torch peak allocated", "NVML peak used", "process peak RSS"


def peak_memory(metrics: dict, device_type: str, outside_torch: bool) -> dict:
    """The run's one peak-memory figure, {"mib", "source"}, from the harness' metrics: on a GPU torch's peak
    allocated, or NVML's peak in use (CUDA context included) where the technique allocates outside PyTorch's
    caching allocator, which torch would not see; on a CPU the process's peak RSS."""
    telemetry = metrics.get("telemetry") or {}
    if device_type != "cuda":
        return {"mib": telemetry.get("rss_peak_mib"), "source": RSS_PEAK}
    if outside_torch:
        return {"mib": telemetry.get("gpu_mem_used_peak_mib"), "source": NVML_PEAK_USED}
    return {"mib": metrics.get("torch_peak_allocated_mib"), "source": TORCH_PEAK_ALLOCATED}
