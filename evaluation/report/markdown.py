"""report.md: the group legend, the quality and the speed tables (one row per run, cells made here), notes,
the plots with the runs each left out, and the failed or skipped runs."""
from __future__ import annotations

import math
import time
from pathlib import Path

from ..telemetry import NVML_PEAK_USED, RSS_PEAK, TORCH_PEAK_ALLOCATED


def fmt(x, digits=None, suffix=""):
    """A cell: '—' for missing; numbers with `digits` decimals (thousands separated) when digits is given."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if digits is not None and isinstance(x, (int, float)):
        return f"{x:,.{digits}f}{suffix}"
    return f"{x}{suffix}"


def fmt_small(x):
    """KL values span many decades (1e-7 for fp16, 0.1 for heavy pruning): three significant digits."""
    return "—" if x is None else f"{x:.3g}"


def fmt_ci(value, low, high, digits=3, suffix=""):
    """'0.350 [0.150, 0.550]'; without bounds just the value."""
    if value is None:
        return "—"
    text = fmt(value, digits, suffix)
    return text + (f" [{low:.{digits}f}, {high:.{digits}f}]" if low is not None and high is not None else "")


def fmt_p(p):
    return "—" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}" if p < 0.1 else f"{p:.2f}")


THREE_SENTENCES = (
    "Accuracy and macro-F1 carry a 95 % bootstrap interval over the questions ([low, high]): how far the score could "
    "move on another question set like this one. Every other run is compared with its group's baseline question by "
    "question: flips count the questions it newly gets wrong (→wrong) and newly gets right (→right), the McNemar p "
    "and the paired Δ-accuracy interval say whether that change is real, and with random weights \"right\" means "
    "\"answers as the baseline does\" (marked agr.). A \"paired\" speed-up was timed with --paired: an fp32-eager "
    "reference pass ÷ the run's pass, alternated in one session, the geometric mean over rounds with a t interval, "
    "\"n.s.\" when it includes 1.0; \"apart, no test\" is the baseline run's median pass ÷ the run's, timed at other "
    "times, where the machine's drift is unmeasured. A \"sig. 5 %\" column says no whenever a change is not "
    "significant at 5 % (or untested) — such runs are not faster, slower, better or worse than the baseline, and "
    "they are never ranked against each other.")

QUALITY_COLUMNS = ["group", "#", "technique", "variant", "dtype", "weights", "n", "accuracy [95% CI]",
                   "macro-F1 [95% CI]", "vs run", "agreement %", "mean KL", "flips →wrong / →right", "McNemar p",
                   "Δ accuracy [95% CI]", "quality change sig. 5%", "run"]
SPEED_COLUMNS = ["group", "#", "technique", "variant", "p50 ms/q", "p99 ms/q", "q/s", "median pass s [95% CI]",
                 "speed-up [95% CI]", "speed change sig. 5%", "peak MiB", "footprint MiB", "mem ratio", "% of peak",
                 "J/q", "run"]


def quality_cells(r: dict, referenced: set[tuple]) -> list[str]:
    random = r["weights"] == "random"
    tag = " (random)" if random else ""
    acc = fmt_ci(r["accuracy"], r.get("accuracy_ci_low"), r.get("accuracy_ci_high"))
    f1 = fmt_ci(r["macro_f1"], r.get("macro_f1_ci_low"), r.get("macro_f1_ci_high"))
    agreement = fmt(r["agreement"], 1)
    if r["agreement"] is None and (r["is_group_baseline"] or (r["group"], r["run"]) in referenced):
        agreement = "ref"
    vs = "—"
    if r["reference"]:
        vs = f"`{r['reference']}`" + (" (csv)" if r["reference_source"] == "per_question.csv" else "")
    if r["comparison_reference"] and r["comparison_reference"] != r["reference"]:
        vs += f"; paired: `{r['comparison_reference']}`"
    agr = " (agr.)" if r["paired_basis"] == "agreement_with_reference" else ""
    flips = "—" if r["right_to_wrong"] is None else f"{r['right_to_wrong']} / {r['wrong_to_right']}{agr}"
    diff = fmt_ci(r["accuracy_diff"], r["accuracy_diff_ci_low"], r["accuracy_diff_ci_high"])
    diff = diff.replace("-", "−") + (agr if r["accuracy_diff"] is not None else "")
    if r["distinguishable"] is None:
        sig = "—"
    elif not r["distinguishable"]:
        sig = "no"
    elif agr:
        sig = "yes (differs)"
    else:
        sig = "yes (worse)" if (r["accuracy_diff"] or 0) < 0 else "yes (better)"
    return [r["group"], r["plot_id"], r["technique"], r["variant"], fmt(r["dtype"]), r["weights"], fmt(r["n"]),
            acc + (tag if r["accuracy"] is not None else ""), f1 + (tag if r["macro_f1"] is not None else ""),
            vs, agreement, fmt_small(r["mean_kl"]), flips, fmt_p(r["mcnemar_p"]), diff, sig, f"`{r['run']}`"]


def speedup_cell(r: dict, base_unstable: bool) -> str:
    if r["repeat_flag"] and not r["is_group_baseline"]:
        return "⚠ repeats disagree"
    if r["speedup"] is None:
        return "—"
    if r["speedup_basis"] == "baseline":
        text = "1.00× (base)"
    elif r["speedup_basis"] == "q/s":
        text = fmt(r["speedup"], 2, "×") + " (q/s ratio, no CI)"
    elif r["speedup_ci_low"] is None:
        text = fmt(r["speedup"], 2, "×") + " (no CI: too few passes)"
    else:
        text = fmt_ci(r["speedup"], r["speedup_ci_low"], r["speedup_ci_high"], 2, "×")
        if r["speedup_basis"] == "paired":
            text += " paired" + ("" if r["significant_speedup"] else " n.s.")
        else:  # timed apart: the machine's drift between the runs is unmeasured, so no verdict
            text += " apart, no test"
    return text + (" ⚠ baseline repeats disagree" if base_unstable and not r["is_group_baseline"] else "")


PEAK_TAGS = {TORCH_PEAK_ALLOCATED: " (GPU)", NVML_PEAK_USED: " (NVML)", RSS_PEAK: " (RSS)"}


def speed_cells(r: dict, base_unstable: bool) -> list[str]:
    peak = "—"
    if r["peak_mib"] is not None:
        peak = fmt(r["peak_mib"], 0) + PEAK_TAGS.get(r["peak_source"], "")
    if r["pass_s_median_value"] is None:
        median = "—"
    elif r.get("pass_s_median_ci_low") is None:
        median = fmt(r["pass_s_median_value"], 3) + f" ({fmt(r['timed_passes'])} passes, no CI)"
    else:
        median = fmt_ci(r["pass_s_median_value"], r["pass_s_median_ci_low"], r["pass_s_median_ci_high"])
    if r["speedup_basis"] in ("baseline", "q/s", "apart") or r["speedup_ci_low"] is None or r["repeat_flag"]:
        sig = "—"
    elif r["significant_speedup"]:
        sig = "yes (faster)" if r["speedup"] > 1 else "yes (slower)"
    else:
        sig = "no"
    return [r["group"], r["plot_id"], r["technique"], r["variant"], fmt(r["p50_ms"], 2), fmt(r["p99_ms"], 2),
            fmt(r["qps"], 1), median, speedup_cell(r, base_unstable), sig, peak,
            fmt(r["footprint_bytes"] / 2**20 if r["footprint_bytes"] is not None else None, 1),
            fmt(r["mem_ratio"], 2, "×"), fmt(r["roofline_pct"], 1), fmt(r["energy_j_per_q"], 3), f"`{r['run']}`"]


def table_cells(r: dict, referenced: set[tuple], base_unstable: bool = False) -> dict:
    """The run's cells of both tables by column name (QUALITY_COLUMNS, SPEED_COLUMNS)."""
    return dict(zip(SPEED_COLUMNS, speed_cells(r, base_unstable))) | dict(zip(QUALITY_COLUMNS,
                                                                              quality_cells(r, referenced)))


def md_table(header: list[str], body: list[list[str]]) -> str:
    clean = lambda c: str(c).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(clean(c) for c in row) + " |" for row in body])


def last_line(text: str | None) -> str:
    lines = [x for x in (text or "").strip().splitlines() if x.strip()]
    return lines[-1][:200] if lines else "—"


def markdown(rows: list[dict], groups: list[dict], failed: list[dict], plots: list[Path], out: Path,
             plot_info: dict | None = None) -> str:
    referenced = {(r["group"], r["reference"]) for r in rows if r["reference"]}  # runs others compared against
    unstable = {g["name"] for g in groups if g["baseline_unstable"]}
    parts = [f"# Run comparison\n\nGenerated {time.strftime('%Y-%m-%d %H:%M %Z')} by `python -m evaluation.report` "
             f"from {len(rows)} run(s) and {len(failed)} failed or skipped run(s).\n"]
    parts.append("## Groups\n\nEvery comparison (agreement, flips, McNemar, Δ accuracy, speed-up, mem ratio) is taken "
                 "only within a group, against the group's baseline run: same device, model, decode mode and "
                 "question set.\n")
    parts.append(md_table(["group", "device", "model", "weights", "decode", "question set", "runs", "baseline run"],
                          [[g["name"], f"{g['device_type']}: {g['device_name']}", g["model"], g["weights"],
                            g["decode"], g["question_set"], g["runs"],
                            (f"`{g['baseline']}`" if g["baseline"] else "none (no comparisons)")
                            + (" ⚠ its repeats disagree in timing" if g["baseline_unstable"] else "")]
                           for g in groups]))
    repeats = [f"group {g['name']}: {line}" for g in groups for line in g["unstable_repeats"]]
    if repeats:
        parts.append("\n**Repeated runs whose timings disagree** (their speed-ups are not shown: rerun on a quieter "
                     "machine or with more timed passes, `--min-passes`):\n\n" + "\n".join(f"- {x}" for x in repeats))
    cells = [table_cells(r, referenced, r["group"] in unstable) for r in rows]
    parts.append("\n## Runs\n\n### Quality\n")
    parts.append(md_table(QUALITY_COLUMNS, [[c[k] for k in QUALITY_COLUMNS] for c in cells]))
    parts.append("\n### Speed and memory\n")
    parts.append(md_table(SPEED_COLUMNS, [[c[k] for k in SPEED_COLUMNS] for c in cells]))
    on_cpu = any(r["device_type"] != "cuda" for r in rows)
    notes = [f"**How to read the statistics.** {THREE_SENTENCES}",
             "accuracy and macro-F1 marked **(random)** come from random weights (`weights: random`): they say "
             "nothing about the model; compare such runs by agreement with their group's baseline instead.",
             "vs run: the run that agreement % and mean KL are measured against; `(csv)`: computed by this report from "
             "both runs' per_question.csv against the group's baseline (the run had no `--reference` fidelity), "
             "else recorded by the run against its own `--reference`; `ref` "
             "marks a run others are compared with. Flips, McNemar p, Δ accuracy and the speed-up are always "
             "against the group's baseline.",
             "flips →wrong / →right: questions the baseline answered right and the run wrong, and the reverse "
             "(`agr.`: with random weights \"right\" = the baseline's answer; then McNemar p is only a conservative "
             "threshold — ≥ 6 changed answers for p < 0.05 — and Δ accuracy = agreement − 1).",
             "latency: per question (a batch's time divided by its questions), p50/p99 over the timed passes; "
             "median pass: the median timed pass with its distribution-free 95 % interval (needs ≥ 6 passes).",
             "speed-up: the baseline's median pass ÷ the run's (> 1: faster) with a 95 % bootstrap interval over "
             "both runs' passes (needs ≥ 3 each); `n.s.`: the interval includes 1.0; `q/s ratio, no CI`: an older "
             "run without pass times. Sorting is by group, technique and variant, never by speed.",
             "peak MiB (the run's `metrics.peak_memory`): (GPU) = torch peak allocated; (NVML) = NVML's peak device "
             "memory in use, for runs that allocate outside PyTorch's allocator (torch sees almost nothing of "
             "theirs; NVML includes the CUDA context); (RSS) = the process' peak resident memory on a CPU, Python "
             "and library runtime included.",
             "mem ratio: on a GPU peak ÷ the baseline's peak (an (NVML) run against the baseline's NVML peak); on a "
             "CPU model footprint ÷ the baseline's footprint"
             + (" — the RSS is dominated by the runtime and hides the model's size." if on_cpu else "."),
             "% of peak: achieved TFLOP/s ÷ the machine's measured dense-matmul peak (`metrics.roofline_fraction`); "
             "— where the run did not record it."]
    no_energy = sorted({f"{r['device_type']}: {r['energy_note']}" for r in rows if r["energy_j_per_q"] is None})
    if no_energy:
        notes.append("J/q (energy per question) is shown only where NVML measured it; missing because: "
                     + "; ".join(no_energy) + ".")
    errors = [f"`{r['run']}`: {r['comparison_error']}" for r in rows if r.get("comparison_error")]
    if errors:
        notes.append("not compared with the baseline question by question: " + "; ".join(errors))
    parts.append("\n" + "\n".join(f"- {n}" for n in notes) + "\n")
    if plots:
        parts.append("## Plots\n")
        for p in plots:
            parts.append(f"![{p.stem}]({p.relative_to(out)})\n")
            info = (plot_info or {}).get(p.stem) or {}
            for note in info.get("notes", []):
                parts.append(f"- {note}")
            left = info.get("left_out") or []
            if left:
                parts.append(f"\nLeft out of `{p.name}`:\n\n" + "\n".join(
                    f"- group {x['group']} #{x['plot_id']} `{x['run']}`: {x['reason']}" for x in left) + "\n")
            else:
                parts.append(f"\nNo run left out of `{p.name}`.\n")
    parts.append("## Failed or skipped runs\n")
    if failed:
        parts.append(md_table(["run", "status", "return code", "reason (last line of stderr)"],
                              [[f"`{f['run']}`", "skipped (broken or hopeless here)" if f.get("skipped") else "failed",
                                fmt(f.get("returncode")), (f.get("reason") or last_line(f.get("stderr_tail")))
                                + (f" ({f['note']})" if f.get("note") else "")] for f in failed]))
        for f in failed:
            tail = "\n".join((f.get("stderr_tail") or "").rstrip().splitlines()[-15:])
            parts.append(f"\n<details><summary>{f['run']}: command{' and stderr tail' if tail else ''}</summary>\n\n"
                         f"```\n{f.get('command') or '(command not recorded)'}\n```\n"
                         + (f"\n```\n{tail}\n```\n" if tail else "") + "</details>")
    else:
        parts.append("None.")
    return "\n".join(parts) + "\n"
