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
    """Everything a run is said to gain or lose (stats.flat_summary names), computed once: the comparison the run
    stored where it has one — against its paired reference (--paired: the speed-up timed in alternating rounds) or
    against this group's baseline run (--reference) — else here, from both runs' per_question.csv and pass times,
    against the group's baseline, timed apart (its speed-up is never significant). Plus the memory ratio."""
    r.update(dict.fromkeys(COMPARISON_KEYS), qps_ratio=None, mem_ratio=None, speedup_basis=None,
             comparison_reference=None)
    if base is not None:
        r["qps_ratio"] = ratio(r["qps"], base["qps"])
        if r["nvml_peak"] and not base["nvml_peak"]:  # NVML's figure includes the CUDA context: like with like
            r["mem_ratio"] = ratio(r["mem_mib"], base["gpu_mem_used_peak_mib"])
        else:
            r["mem_ratio"] = ratio(r["mem_mib"], base["mem_mib"])
    if r is base:
        r.update(speedup=1.0, speedup_basis="baseline")
        return
    stored = r["_comparison"]
    timing = ((stored or {}).get("speedup") or {}).get("timing")
    comparison, against = None, None
    if stored and (timing == "paired" or base is not None and r["reference"] == base["run"]):
        comparison, against = stored, r["reference"]
    elif base is not None and r["_pq"] and base["_pq"]:
        try:
            _, gold, pred, ref_pred = stats.align(r["_pq"], base["_pq"])
            comparison = stats.comparison_stats(pred, ref_pred, None if r["weights"] == "random" else gold,
                                                run_pass_s=r["_pass_s"], ref_pass_s=base["_pass_s"])
            against = base["run"]
        except ValueError as e:  # different gold labels for one PMID: the runs read different data
            r["comparison_error"] = str(e)
        if comparison and r["agreement"] is None:
            f = fidelity(base["_pq"], r["_pq"])
            r.update(agreement=f["agreement"], mean_kl=f["mean_kl"], reference=base["run"],
                     reference_source="per_question.csv")
    if comparison:
        r.update({k: v for k, v in stats.flat_summary(comparison).items() if k in COMPARISON_KEYS})
        r["comparison_reference"] = against
    if r["speedup"] is not None:
        r["speedup_basis"] = (comparison.get("speedup") or {}).get("timing") or "apart"
    elif r["qps_ratio"] is not None:  # older runs without pass times: the throughput ratio, no interval
        r.update(speedup=r["qps_ratio"], speedup_basis="q/s")
