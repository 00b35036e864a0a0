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
    assert "gpu_util" in out["nvml_error"]  # the one-line reason the report shows


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


# --- no device-to-host reads inside the timed loop --------------------------------------------------------------

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from evaluation.answering import answer_logits, full_attention_mask, greedy_generate, pad_batch  # noqa: E402
from evaluation.modeling import random_model  # noqa: E402

# Ops whose result the host must wait for on a GPU: a scalar read back (`.item()`, `bool(t)`, `if t.all()`) or an
# output shape that depends on the data.
HOST_READS = {torch.ops.aten._local_scalar_dense, torch.ops.aten.is_nonzero, torch.ops.aten.item,
              torch.ops.aten.equal, torch.ops.aten.nonzero, torch.ops.aten.masked_select, torch.ops.aten._unique2,
              torch.ops.aten.unique_consecutive}


class HostReads(TorchDispatchMode):
    """Records every op below the Python API that would sync a CUDA stream: on the CPU, the same ops run."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in HOST_READS:
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def tiny_model():
    return random_model("tiny-random", 0, torch.float32, torch.device("cpu"))


# three prompts of different lengths in one batch (token-budget batching would split them), so the batch is padded
PROMPTS = [[2] + list(range(10, 10 + n)) for n in (23, 9, 15)]


def one_batch(left_pad: bool):
    """All three prompts as one batch of 24 tokens, pad id 1."""
    return pad_batch(PROMPTS, range(3), 24, 1, left_pad, torch.device("cpu"))


def test_a_score_pass_reads_nothing_back_from_the_device(tiny_model):
    batch = one_batch(left_pad=False)
    assert batch.real_tokens < batch.padded_tokens
    answer_ids = torch.tensor([5, 6, 7])
    with HostReads() as reads:
        answer_logits(tiny_model, batch, answer_ids)
    # transformers' SDPA mask code from a 2D mask reads `padding_mask.all()` twice here
    assert reads.ops == []


def test_a_score_pass_builds_no_kv_cache(tiny_model, monkeypatch):
    """BioGPT builds a cache by default (config.use_cache): a copy of every layer's keys and values per batch."""
    from transformers.models.biogpt import modeling_biogpt

    made = []
    real = modeling_biogpt.DynamicCache
    monkeypatch.setattr(modeling_biogpt, "DynamicCache", lambda *a, **k: made.append(1) or real(*a, **k))
    batch = one_batch(left_pad=False)
    answer_logits(tiny_model, batch, torch.tensor([5, 6, 7]))
    assert made == []


def test_greedy_decoding_reads_back_only_its_stopping_check(tiny_model):
    from evaluation.telemetry import Clock

    batch = one_batch(left_pad=True)
    max_new = 5
    with HostReads() as reads:
        tokens, _ = greedy_generate(tiny_model, batch, max_new, eos_id=2, clock=Clock(torch.device("cpu")))
    n = tokens.shape[1]
    checks = n - 1 + (n < max_new)  # one `done.all()` before each decode step, plus the one that stopped early
    assert n > 1 and len(reads.ops) == checks, reads.ops


def test_the_4d_mask_gives_the_logits_and_tokens_of_transformers_own_mask(tiny_model):
    """The precomputed mask is the one transformers builds from the 2D mask: same logits, same greedy tokens."""
    from evaluation.telemetry import Clock

    import evaluation.answering as answering

    batch = one_batch(left_pad=False)
    answer_ids = torch.tensor([5, 6, 7])
    with torch.inference_mode():
        hidden = tiny_model.biogpt(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                   position_ids=batch.position_ids).last_hidden_state
        want = tiny_model.output_projection(hidden[torch.arange(3), batch.last_index])[:, answer_ids]
    torch.testing.assert_close(answer_logits(tiny_model, batch, answer_ids), want)

    left = one_batch(left_pad=True)
    clock = Clock(torch.device("cpu"))
    got, _ = greedy_generate(tiny_model, left, 6, eos_id=-1, clock=clock)
    try:  # the 2D mask straight to transformers, as before
        answering.full_attention_mask = lambda model, mask, q_length: mask
        plain, _ = greedy_generate(tiny_model, left, 6, eos_id=-1, clock=clock)
    finally:
        answering.full_attention_mask = full_attention_mask
    assert torch.equal(got, plain)


def test_non_sdpa_attention_gets_the_2d_mask():
    """Eager attention adds its mask: a boolean 4D mask would be read as +1/+0, so it gets the 2D one."""
    model = types.SimpleNamespace(config=types.SimpleNamespace(_attn_implementation="eager"))
    mask = torch.ones(2, 5, dtype=torch.long)
    assert full_attention_mask(model, mask, 5) is mask
