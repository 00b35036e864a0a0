"""CUDA-only code paths proven on the CPU: NVML sampling with a fake pynvml, and no host syncs in the hot loop."""
import sys
import time
import types

import pytest
import torch

from evaluation import telemetry
from evaluation.telemetry import Sampler


class NVMLError_NotSupported(Exception):  # noqa: N801 - the name pynvml gives it, which the report quotes
    pass


def fake_pynvml(energy_mj=(1000, 5000), broken=("nvmlDeviceGetUtilizationRates",)):
    """A pynvml stand-in: `broken` calls raise NotSupported (as utilisation does under MIG), the rest answer.
    `energy_mj`: successive total-energy counter readings (None: the counter raises too)."""
    calls = {}
    energy = iter(energy_mj or ())

    def call(name, value):
        def f(*args):
            calls[name] = calls.get(name, 0) + 1
            if name in broken or value is None:
                raise NVMLError_NotSupported("Not Supported")
            return value() if callable(value) else value
        return f

    nv = types.ModuleType("pynvml")
    nv.NVML_TEMPERATURE_GPU, nv.NVML_CLOCK_SM = 0, 1
    for name, value in {
        "nvmlDeviceGetUtilizationRates": types.SimpleNamespace(gpu=90, memory=40),
        "nvmlDeviceGetMemoryInfo": types.SimpleNamespace(used=3 * 2**30),
        "nvmlDeviceGetPowerUsage": 200_000,  # mW
        "nvmlDeviceGetTemperature": 60,
        "nvmlDeviceGetClockInfo": 1800,
        "nvmlDeviceGetTotalEnergyConsumption": (lambda: next(energy)) if energy_mj else None,
    }.items():
        setattr(nv, name, call(name, value))
    return nv, calls


@pytest.fixture
def nvml(monkeypatch):
    """Install a fake pynvml and give Sampler(cuda) a handle without a GPU; returns the fake's factory."""
    def install(**kwargs):
        nv, calls = fake_pynvml(**kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", nv)
        return calls
    monkeypatch.setattr(telemetry, "_nvml_handle", lambda device: "handle")
    return install


def sample_a_while(samples=3, timeout_s=5.0) -> Sampler:
    with Sampler(torch.device("cuda"), interval_s=0.005) as s:
        deadline = time.perf_counter() + timeout_s
        while len(s.samples) < samples and s.thread.is_alive() and time.perf_counter() < deadline:
            time.sleep(0.005)
    return s


def test_a_failing_sensor_is_skipped_and_the_others_keep_sampling(nvml):
    calls = nvml()
    s = sample_a_while()
    out = s.summary(questions=4)
    assert out["samples"] >= 3
    assert calls["nvmlDeviceGetUtilizationRates"] == 1, "a failed sensor is read once, then skipped"
    assert calls["nvmlDeviceGetPowerUsage"] == out["samples"]
    assert out["failed_sensors"] == {"gpu_util": "NVMLError_NotSupported: Not Supported"}
    assert out["gpu_util_mean"] is None and out["mem_util_mean"] is None
    assert out["power_w_mean"] == 200.0 and out["power_w_max"] == 200.0 and out["temp_c_max"] == 60
    assert out["gpu_mem_used_peak_mib"] == 3 * 1024 and out["sm_clock_mhz_mean"] == 1800
    assert out["energy_j"] == pytest.approx(4.0) and out["energy_j_per_question"] == pytest.approx(1.0)
    assert out["energy_source"] == "nvml_total_energy_counter"
    assert "gpu_util" in out["nvml_error"]  # the one-line reason report.py shows


def test_energy_from_the_counter_even_when_every_sampled_sensor_fails(nvml):
    nvml(broken=("nvmlDeviceGetUtilizationRates", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetPowerUsage",
                 "nvmlDeviceGetTemperature", "nvmlDeviceGetClockInfo"))
    s = sample_a_while()
    assert not s.thread.is_alive()
    out = s.summary(questions=2)
    assert set(out["failed_sensors"]) == set(telemetry.SENSORS)
    assert out["power_w_mean"] is None and out["gpu_util_mean"] is None
    assert out["energy_j"] == pytest.approx(4.0) and out["energy_source"] == "nvml_total_energy_counter"


def test_energy_falls_back_to_integrated_power_without_the_counter(nvml):
    nvml(energy_mj=None)
    s = sample_a_while(samples=4)
    out = s.summary(questions=1)
    power = [x for x in s.samples if "power_w" in x]
    assert out["energy_source"] == "integrated_power"
    assert out["energy_j"] == pytest.approx(200.0 * (power[-1]["t"] - power[0]["t"]))
    assert out["failed_sensors"]["energy"].startswith("NVMLError_NotSupported")
    assert out["gpu_util_mean"] is None and out["power_w_mean"] == 200.0
