"""Clocks, latency statistics, and the NVML (or CPU) sampler that runs during the timed phase only."""
from __future__ import annotations

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


class Sampler:
    """Samples GPU (NVML) or process CPU/RSS at ~10 Hz in a background thread; never ends a run."""

    def __init__(self, device: torch.device, interval_s: float = 0.1):
        self.interval_s, self.samples, self.error = interval_s, [], None
        self.handle = self.energy0 = None
        self.process = psutil.Process()
        self._stop = threading.Event()
        if device.type != "cuda":
            self.error = "NVML not used: the run is on the CPU"
            return
        try:
            self.handle = _nvml_handle(device)
        except Exception as e:
            self.error = f"NVML unavailable: {type(e).__name__}: {e}"

    def _read_gpu(self) -> dict:
        import pynvml

        h = self.handle
        util = pynvml.nvmlDeviceGetUtilizationRates(h)
        return {"t": time.perf_counter(), "gpu_util": util.gpu, "mem_util": util.memory,
                "mem_used_mib": pynvml.nvmlDeviceGetMemoryInfo(h).used / 2**20,
                "power_w": pynvml.nvmlDeviceGetPowerUsage(h) / 1e3,
                "temp_c": pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU),
                "sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)}

    def _read_cpu(self) -> dict:
        return {"t": time.perf_counter(), "rss_mib": self.process.memory_info().rss / 2**20,
                "cpu_percent": self.process.cpu_percent(None)}

    def _loop(self):
        read = self._read_gpu if self.handle is not None else self._read_cpu
        while not self._stop.is_set():
            try:
                self.samples.append(read())
            except Exception as e:  # a sensor that fails mid-run: keep what we have
                self.error = f"sampling stopped: {type(e).__name__}: {e}"
                return
            self._stop.wait(self.interval_s)

    def _energy_mj(self):
        import pynvml

        try:
            return pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        except Exception:
            return None

    def __enter__(self):
        if self.handle is not None:
            self.energy0 = self._energy_mj()
        else:
            self.process.cpu_percent(None)
        self.t0 = time.perf_counter()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.elapsed_s = time.perf_counter() - self.t0
        self.energy1 = self._energy_mj() if self.handle is not None else None
        self._stop.set()
        self.thread.join()

    def summary(self, questions: int) -> dict:
        """GPU figures (null with a reason without NVML) and CPU figures (RSS, utilisation)."""
        s, out = self.samples, {"samples": len(self.samples), "nvml_error": None}
        gpu_keys = ["gpu_util_mean", "mem_util_mean", "gpu_mem_used_peak_mib", "power_w_mean", "power_w_max",
                    "energy_j", "energy_j_per_question", "energy_source", "temp_c_mean", "temp_c_max",
                    "sm_clock_mhz_mean"]
        if self.handle is None or not s:
            out.update(dict.fromkeys(gpu_keys))
            out["nvml_error"] = self.error or "no NVML samples were taken"
            out["rss_peak_mib"] = max((x.get("rss_mib", 0) for x in s), default=self.process.memory_info().rss / 2**20)
            out["cpu_util_mean"] = statistics.fmean(x["cpu_percent"] for x in s[1:]) if len(s) > 1 else None
            return out
        mean = lambda k: statistics.fmean(x[k] for x in s)  # noqa: E731
        if self.energy0 is not None and self.energy1 is not None:
            energy, source = (self.energy1 - self.energy0) / 1e3, "nvml_total_energy_counter"
        else:  # integrate sampled power over time
            energy = sum((b["t"] - a["t"]) * (a["power_w"] + b["power_w"]) / 2 for a, b in zip(s, s[1:]))
            source = "integrated_power"
        out.update(gpu_util_mean=mean("gpu_util"), mem_util_mean=mean("mem_util"),
                   gpu_mem_used_peak_mib=max(x["mem_used_mib"] for x in s), power_w_mean=mean("power_w"),
                   power_w_max=max(x["power_w"] for x in s), energy_j=energy,
                   energy_j_per_question=energy / questions if questions else None, energy_source=source,
                   temp_c_mean=mean("temp_c"), temp_c_max=max(x["temp_c"] for x in s),
                   sm_clock_mhz_mean=mean("sm_clock_mhz"), nvml_error=self.error)
        out["rss_peak_mib"] = self.process.memory_info().rss / 2**20
        out["cpu_util_mean"] = None
        return out
