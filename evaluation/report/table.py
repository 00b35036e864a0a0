"""table.md: the compact benchmark table the README pastes, one section per group of runs."""
from __future__ import annotations

from .markdown import fmt, fmt_small, last_line, md_table, speedup_cell


def isa_text(isa: dict | None) -> str:
    """'AVX2; no AVX-512 BF16, VNNI, AMX' from environment.cpu_isa (the flags CPU speed depends on)."""
    if not isa:
        return "ISA not recorded"
    names = {"avx512_bf16": "AVX-512 BF16", "vnni": "VNNI", "amx_tile": "AMX"}
    has = [v for k, v in names.items() if isa.get(k)]
    lacks = [v for k, v in names.items() if not isa.get(k)]
    return f"{isa.get('capability')}" + (f", {', '.join(has)}" if has else "") + (
        f"; no {', '.join(lacks)}" if lacks else "")


def benchmark_table(rows: list[dict], failed: list[dict]) -> str:
    """The README's results table: per group (device, model, questions) its machine line, then one row per run —
    median pass with its range, speed-up with its interval against the group's baseline, agreement / mean KL against
    it, footprint, % of the measured matmul peak, setup (load excluded: compile, tuning, quantization), padding and
    real tokens/s — and the variants not run, with why. Call after assign_groups."""
    parts = []
    for group in sorted({r["group"] for r in rows}):
        members = [r for r in rows if r["group"] == group]
        head = members[0]
        weights = "weights: random, accuracy meaningless" if head["weights"] == "random" else "real weights"
        machine = (isa_text(next((r["cpu_isa"] for r in members if r["cpu_isa"]), None))
                   if head["device_type"] == "cpu" else "GPU")
        parts.append(f"**{head['model']}** ({weights}), {head['n']} questions — {head['device_type']}: "
                     f"{head['device_name']} ({machine}), {head['threads']} threads, torch {head['torch']}, "
                     f"{(head['date'] or '?')[:10]}\n")
        body = []
        for r in members:
            passes = r["_pass_s"] or []
            spread = f" ({min(passes):.1f}–{max(passes):.1f})" if len(passes) > 1 else ""
            agree = "ref" if r["is_group_baseline"] else (
                "—" if r["agreement"] is None else f"{r['agreement']:.0f} / {fmt_small(r['mean_kl'])}")
            body.append([f"{r['technique']} {r['variant']}", f"{r['dtype']}",
                         (f"{r['pass_s_median_value']:.1f}{spread}" if r["pass_s_median_value"] is not None else "—")
                         + f" ×{len(passes)}", speedup_cell(r, False), agree,
                         fmt(r["footprint_bytes"] / 2**20 if r["footprint_bytes"] is not None else None, 0),
                         fmt(r["roofline_pct"], 0), fmt(r["setup_s"], 0),
                         fmt(100 * r["padding_fraction"] if r["padding_fraction"] is not None else None, 1),
                         fmt(r["tokens_per_s"], 0)])
        parts.append(md_table(["run", "dtype", "pass s, median (min–max) ×passes", "speed-up [95% CI]",
                               "agreement % / mean KL", "footprint MiB", "% of peak", "setup s", "padding %",
                               "real tokens/s"], body) + "\n")
    peaks = sorted({(r["model"], r["dtype"], r["roofline_peak_tflops"]) for r in rows if r.get("roofline_peak_tflops")})
    parts.append("Speed-up: paired = the geometric mean over rounds of an fp32-eager reference pass ÷ the run's pass, "
                 "timed alternately in one session (--paired), 95% interval over the rounds (n.s.: it includes 1); "
                 "apart = the baseline run's median pass ÷ this run's, timed in separate runs: the machine's drift "
                 "between them is unmeasured, so no test. % of peak: the forward's nominal FLOP/s ÷ this machine's measured dense "
                 "matmul peak in the run's dtype (the best call of a square torch.mm, the highest its runs "
                 "recorded: " + ", ".join(f"{m} {d} {p * 1e3:.0f} GFLOP/s" for m, d, p in peaks) + "; int8 runs are set "
                 "against the float32 peak, so they can pass 100%). Setup: compile, tuning or quantization, never "
                 "inside a pass. Padding: the share of computed tokens that are padding.\n")
    if failed:
        lines = dict.fromkeys(  # one line per variant and reason, however many models it was skipped for
            f"- `{f['run']}`: " + (f"skipped — {f.get('reason')}" if f.get("skipped")
                                   else f"failed (exit {f.get('returncode')}) — {last_line(f.get('stderr_tail'))}")
            for f in failed)
        parts.append("Not in the table:\n\n" + "\n".join(lines) + "\n")
    return "\n".join(parts)
