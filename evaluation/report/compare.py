"""A run against its group's baseline: every figure a run is said to gain or lose, in one function."""
from __future__ import annotations

from .. import stats
from ..metrics import fidelity


def ratio(a, b):
    return a / b if a is not None and b else None


COMPARISON_KEYS = ("mcnemar_p", "right_to_wrong", "wrong_to_right", "changed", "changed_ci_low", "changed_ci_high",
                   "paired_basis", "accuracy_diff", "accuracy_diff_ci_low", "accuracy_diff_ci_high", "macro_f1_diff",
                   "macro_f1_diff_ci_low", "macro_f1_diff_ci_high", "distinguishable", "speedup", "speedup_ci_low",
                   "speedup_ci_high", "significant_speedup")


def compare_with_baseline(r: dict, base: dict | None):
    """Everything a run is said to gain or lose, against its group's baseline only (stats.flat_summary names):
    agreement and KL, the paired test and accuracy difference (per_question.csv aligned by PMID; random weights:
    agreement with the baseline as the basis), the speed-up = median baseline pass ÷ median run pass with its
    bootstrap interval, and the memory ratio."""
    r.update(dict.fromkeys(COMPARISON_KEYS), qps_ratio=None, mem_ratio=None, speedup_basis=None,
             comparison_reference=None)
    if base is None:
        return
    r["qps_ratio"] = ratio(r["qps"], base["qps"])
    if r["nvml_peak"] and not base["nvml_peak"]:  # NVML's figure includes the CUDA context: like with like
        r["mem_ratio"] = ratio(r["mem_mib"], base["gpu_mem_used_peak_mib"])
    else:
        r["mem_ratio"] = ratio(r["mem_mib"], base["mem_mib"])
    if r is base:
        r.update(speedup=1.0, speedup_basis="baseline")
        return
    ours, theirs = r["_pq"], base["_pq"]
    if r["agreement"] is None and ours and theirs:
        f = fidelity(theirs, ours)
        if f["agreement"] is not None:
            r.update(agreement=f["agreement"], mean_kl=f["mean_kl"], reference=base["run"],
                     reference_source="per_question.csv")
    comparison = None
    try:
        if ours and theirs:
            _, gold, pred, ref_pred = stats.align(ours, theirs)
            if pred:
                comparison = stats.comparison_stats(pred, ref_pred, None if r["weights"] == "random" else gold)
        elif r["_comparison"] and r["reference"] == base["run"]:
            comparison = {k: v for k, v in r["_comparison"].items() if k not in ("speedup", "significant_speedup")}
        if r["_pass_s"] and base["_pass_s"]:
            speed = stats.speedup_ci(r["_pass_s"], base["_pass_s"])
            comparison = (comparison or {}) | {"speedup": speed, "significant_speedup": stats.significant_speedup(speed)}
    except ValueError as e:  # different gold labels for one PMID: the runs read different data
        r["comparison_error"] = str(e)
    if comparison:
        r.update({k: v for k, v in stats.flat_summary(comparison).items() if k in COMPARISON_KEYS})
        r["comparison_reference"] = base["run"]
    if r["speedup"] is not None:
        r["speedup_basis"] = "median pass"
    elif r["qps_ratio"] is not None:  # older runs without pass times: the throughput ratio, no interval
        r.update(speedup=r["qps_ratio"], speedup_basis="q/s")
