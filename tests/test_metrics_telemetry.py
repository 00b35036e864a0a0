import math

import pytest
import torch

from evaluation.metrics import UNPARSED, classification_metrics, fidelity
from evaluation.telemetry import Sampler, latency_stats, peak_memory


def test_metrics_hand_checked():
    gold = ["yes", "yes", "no", "maybe", "no", "yes"]
    pred = ["yes", "no", "no", "yes", "no", "yes"]
    m = classification_metrics(gold, pred)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # yes: P=2/3 R=2/3 F1=2/3; no: P=2/3 R=1 F1=0.8; maybe: 0 -> macro (2/3 + 0.8 + 0) / 3
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8 + 0) / 3)
    assert m["per_class"]["no"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8),
                                    "support": 2}
    assert m["confusion_matrix"]["matrix"][0] == [2, 1, 0, 0]  # gold yes -> yes, no, maybe, unparsed
    assert m["unparsed"] == 0


def test_unparsed_counts_as_wrong():
    m = classification_metrics(["yes", "no"], ["yes", UNPARSED])
    assert m["accuracy"] == 0.5 and m["unparsed"] == 1
    assert m["confusion_matrix"]["matrix"][1][3] == 1


def test_fidelity_identical_and_different():
    ref = {"1": {"prediction": "yes", "logits": [2.0, 0.0, -1.0]}, "2": {"prediction": "no", "logits": [0.0, 1.0, 0.0]}}
    same = fidelity(ref, ref)
    assert same["agreement"] == 100.0 and same["mean_kl"] == pytest.approx(0.0, abs=1e-12)
    other = {"1": {"prediction": "no", "logits": [0.0, 2.0, -1.0]}, "2": {"prediction": "no", "logits": [0.0, 1.0, 0.0]}}
    f = fidelity(ref, other)
    assert f["agreement"] == 50.0 and f["mean_kl"] > 0.1 and f["max_abs_logit_diff"] == 2.0


def test_latency_stats_percentiles():
    s = latency_stats([float(x) for x in range(1, 101)])
    assert s["p50"] == 50.5 and s["p99"] == pytest.approx(99.01) and s["n"] == 100
    assert s["mean"] == 50.5 and math.isclose(s["stdev"], 29.011, rel_tol=1e-3)
    assert latency_stats([])["p50"] is None


def test_cpu_run_records_rss_and_reason_instead_of_nvml():
    with Sampler(torch.device("cpu"), interval_s=0.01) as s:
        sum(range(200_000))
    out = s.summary(questions=10)
    assert out["nvml_error"] and "CPU" in out["nvml_error"]
    assert out["energy_j"] is None and out["power_w_mean"] is None
    assert out["rss_peak_mib"] > 0


def test_peak_memory_names_its_source():
    """One figure per run: torch's peak on a GPU, NVML's where the technique allocates outside PyTorch (torch would
    see almost nothing of it), the process RSS on a CPU; a missing figure stays missing, with its source."""
    metrics = {"torch_peak_allocated_mib": 50.0, "telemetry": {"gpu_mem_used_peak_mib": 5400.0, "rss_peak_mib": 900.0}}
    assert peak_memory(metrics, "cuda", False) == {"mib": 50.0, "source": "torch peak allocated"}
    assert peak_memory(metrics, "cuda", True) == {"mib": 5400.0, "source": "NVML peak used"}
    assert peak_memory(metrics, "cpu", True) == {"mib": 900.0, "source": "process peak RSS"}
    assert peak_memory({"telemetry": {"gpu_mem_used_peak_mib": None}}, "cuda", True) == {
        "mib": None, "source": "NVML peak used"}


def test_nvml_failure_never_ends_a_run(monkeypatch):
    import pynvml

    def broken():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    monkeypatch.setattr(pynvml, "nvmlInit", broken)
    with Sampler(torch.device("cuda")) as s:
        pass
    out = s.summary(questions=1)
    assert out["gpu_util_mean"] is None and out["energy_j"] is None
    assert "NVML unavailable" in out["nvml_error"]


def test_matmul_peak_measured_once_then_cached(tmp_path, monkeypatch):
    import torch

    from evaluation import roofline

    monkeypatch.setattr(roofline, "CACHE", tmp_path / "peak.json")
    calls = []
    monkeypatch.setattr(roofline, "measure_peak_tflops", lambda device, dtype: calls.append(dtype) or 2.0)
    first = roofline.roofline(0.5, torch.device("cpu"), torch.float32)
    again = roofline.roofline(1.0, torch.device("cpu"), torch.float32)
    other = roofline.roofline(1.0, torch.device("cpu"), torch.bfloat16)
    assert first == {"matmul_peak_tflops": 2.0, "matmul_peak_source": "measured", "roofline_fraction": 0.25}
    assert again["matmul_peak_source"] == "cache" and again["roofline_fraction"] == 0.5
    assert other["matmul_peak_source"] == "measured" and calls == [torch.float32, torch.bfloat16]
    # a run faster than the cached peak: that peak was taken on a busy machine, so it is measured again
    faster = roofline.roofline(3.0, torch.device("cpu"), torch.float32)
    assert faster["matmul_peak_source"] == "measured" and len(calls) == 3 and faster["roofline_fraction"] == 1.5


def best_call_s(call, min_s: float) -> float:
    """The fastest of repeated calls of `call` over at least min_s seconds, after one warm-up call."""
    import time

    call()
    best, start = float("inf"), time.perf_counter()
    while time.perf_counter() - start < min_s:
        t0 = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8], ids=["float32", "int8"])
def test_matmul_peak_agrees_with_an_independent_timing(dtype):
    """The peak against the best call of the GEMM a run executes, timed here: torch.mm in float32, and for int8
    torch.ao's dynamic int8 Linear (what dynamic-int8 runs on a CPU), both n x n x n, 2 n^3 operations a call.
    They agree within 1.5x, so the peak counts its operations, times the dtype's own kernel and times it whole.
    One thread and the two timings interleaved: another job on the machine slows both alike."""
    import warnings

    from evaluation.roofline import SIDE, measure_peak_tflops

    n = SIDE["cpu"]
    if dtype == torch.int8:
        with warnings.catch_warnings():  # torch.ao's quantized modules are deprecated; dynamic-int8 runs them
            warnings.simplefilter("ignore")
            linear, x = torch.ao.nn.quantized.dynamic.Linear(n, n), torch.randn(n, n)
        call = lambda: linear(x)  # noqa: E731
    else:
        a, b = torch.randn(n, n), torch.randn(n, n)
        call = lambda: torch.mm(a, b)  # noqa: E731
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        peak, best_s = 0.0, float("inf")
        for _ in range(3):
            peak = max(peak, measure_peak_tflops(torch.device("cpu"), dtype, min_s=0.1))
            best_s = min(best_s, best_call_s(call, min_s=0.1))
    finally:
        torch.set_num_threads(threads)
    independent = 2 * n**3 / best_s / 1e12
    assert 1 / 1.5 < peak / independent < 1.5, (peak, independent)


def test_environment_names_the_cpu_instruction_sets():
    """What CPU speed depends on is recorded with every run: torch's dispatch level and the matmul units."""
    import torch

    from evaluation.results import cpu_isa, environment, native_bf16_matmul

    isa = environment(torch.device("cpu"))["cpu_isa"]
    assert isa == cpu_isa() and isa["capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(isa) == {"capability", "avx2", "avx512", "avx512_bf16", "vnni", "amx_tile", "amx_fp16"}
    assert all(isinstance(isa[k], bool) for k in isa if k != "capability")
    assert native_bf16_matmul() == (isa["avx512_bf16"] or isa["amx_tile"])
