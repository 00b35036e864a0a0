"""Grouping runs: only runs of one device, model, decode mode and question set are compared, each against its
group's baseline; repeats of one variant whose timings disagree are flagged."""
from __future__ import annotations

from .compare import compare_with_baseline


def group_key(r: dict) -> tuple:
    return (r["device_type"], r["device_name"], r["model"], r["decode"] or "?", r["question_set"])


def one_peak_per_dtype(members: list[dict]) -> None:
    """% of peak against one peak per dtype in a group: the highest matmul peak its runs recorded. Each run
    records the cached peak of its day, and a run faster than it (an int8 run beats the fp32 peak) measures it
    again, so the runs of one table can carry different peaks; dividing by each run's own would rank them by
    when they ran."""
    peaks: dict = {}
    for r in members:
        if r["matmul_peak_tflops"]:
            peaks[r["dtype"]] = max(peaks.get(r["dtype"], 0.0), r["matmul_peak_tflops"])
    for r in members:
        if r["achieved_tflops"] is not None and peaks.get(r["dtype"]):
            r["roofline_pct"] = 100.0 * r["achieved_tflops"] / peaks[r["dtype"]]
            r["roofline_peak_tflops"] = peaks[r["dtype"]]


def assign_groups(rows: list[dict]) -> list[dict]:
    """Letter each comparable group, pick its baseline (the latest baseline run), compare every run with it and
    flag repeated runs whose timings disagree. Returns the groups; rows come back sorted: by group, baseline first,
    then technique and variant (never by speed: a sort by a figure would rank runs the statistics can't tell apart)."""
    keys = sorted({group_key(r) for r in rows}, key=lambda k: tuple(str(x) for x in k))
    groups = []
    for i, key in enumerate(keys):
        members = [r for r in rows if group_key(r) == key]
        baselines = sorted((r for r in members if r["technique"] == "baseline"),
                           key=lambda r: (r["date"] or "", r["run"]))
        base = baselines[-1] if baselines else None
        name = chr(ord("A") + i) if i < 26 else f"G{i + 1}"
        for r in members:
            r["group"] = name
            r["is_group_baseline"] = r is base
            compare_with_baseline(r, base)
        unstable = flag_repeats(members)
        one_peak_per_dtype(members)
        weights = sorted({r["weights"] for r in members})
        groups.append({"name": name, "device_type": key[0], "device_name": key[1], "model": key[2],
                       "decode": key[3], "question_set": key[4], "weights": ", ".join(weights),
                       "baseline": base["run"] if base else None, "runs": len(members),
                       "baseline_unstable": bool(base and base.get("repeat_flag")), "unstable_repeats": unstable})
    rows.sort(key=lambda r: (r["group"], not r["is_group_baseline"], r["technique"] != "baseline",
                             r["technique"], r["variant"], r["run"]))
    for g in groups:  # the number a run carries in the plots, also in the table
        for k, r in enumerate((r for r in rows if r["group"] == g["name"]), 1):
            r["plot_id"] = k
    return groups


REPEAT_TOLERANCE = 1.2  # repeats whose median pass times differ by more than this factor disagree


def pass_time(r: dict):
    """A run's typical pass time (s) for comparing repeats: the median timed pass, else derived from throughput."""
    if r["pass_s_median_value"] is not None:
        return r["pass_s_median_value"]
    return r["n"] / r["qps"] if r["qps"] and r["n"] else None


def flag_repeats(members: list[dict]) -> list[str]:
    """Repeated runs of one variant (same technique and variant in one group) whose timings disagree — median-pass
    intervals that don't overlap, or medians more than 20 % apart — get a repeat_flag; their speed-ups are not
    shown side by side as if either were the answer. Returns one line per disagreeing set."""
    lines = []
    by_variant: dict[tuple, list[dict]] = {}
    for r in members:
        r["repeat_flag"] = None
        by_variant.setdefault((r["technique"], r["variant"]), []).append(r)
    for (technique, variant), runs in sorted(by_variant.items()):
        timed = [(r, pass_time(r)) for r in runs if pass_time(r)]
        if len(timed) < 2:
            continue
        reasons = []
        times = [t for _, t in timed]
        if max(times) / min(times) > REPEAT_TOLERANCE:
            reasons.append(f"median passes {min(times):.3g}–{max(times):.3g} s, {max(times) / min(times):.2f}× apart")
        ivs = [(r["pass_s_median_ci_low"], r["pass_s_median_ci_high"]) for r, _ in timed
               if r.get("pass_s_median_ci_low") is not None]
        if len(ivs) >= 2 and max(lo for lo, _ in ivs) > min(hi for _, hi in ivs):
            reasons.append("their 95 % median-pass intervals don't overlap")
        if reasons:
            text = f"{len(timed)} repeats of {technique}/{variant} disagree in timing: " + "; ".join(reasons)
            for r, _ in timed:
                r["repeat_flag"] = text
            lines.append(text + " (" + ", ".join(f"`{r['run']}`" for r, _ in timed) + ")")
    return lines
