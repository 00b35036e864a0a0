"""The run's closing summary: what was measured, in sentences a newcomer can read without the code."""
from __future__ import annotations

from pathlib import Path

from .config import RunConfig
from .paired import NAME as PAIRED


def _interval(item: dict | None, fmt: str) -> str:
    if not item or item.get("ci_low") is None:
        return ""
    return f" [{item['ci_low']:{fmt}}, {item['ci_high']:{fmt}}]"


def timing_line(m: dict) -> str:
    """Speed, and how far to trust it: how many timed passes and their spread, or that there were none."""
    q = m["latency_question_ms"]
    speed = f"  speed: {m['throughput_qps']:.1f} questions/s, latency per question p50 {q['p50']:.2f} ms, " \
            f"p99 {q['p99']:.2f} ms"
    passes = m["pass_wall_s_samples"]
    if not passes:
        return speed + " (no timed phase, --min-passes 0: from the cold pass, which includes warm-up)"
    if len(passes) == 1:
        return speed + f" (1 timed pass of {passes[0]:.3f} s: no spread to show; --min-passes 3 gives one)"
    median, low, high = m["pass_wall_s_median"], min(passes), max(passes)
    return speed + (f" (median of {len(passes)} timed passes, {median:.3f} s each; spread {low:.3f}-{high:.3f} s, "
                    f"{(high - low) / median:.0%} of the median)")


def memory_line(m: dict, device_type: str) -> str:
    t, peak = m["telemetry"], m["peak_memory"]
    memory = (f"  memory: {peak['mib']:,.0f} MiB {peak['source']}" if peak["mib"] is not None
              else f"  memory: no {peak['source']} figure")
    if device_type == "cuda":
        energy = (f"energy {t['energy_j_per_question']:.3g} J/question, power {t['power_w_mean']:.0f} W mean"
                  if t.get("energy_j_per_question") is not None else f"no energy figure ({t['nvml_error']})")
        return f"{memory}; {energy}"
    return f"{memory} (no energy figure on a CPU)"


def speedup_text(speed: dict, significant: bool | None) -> str:
    """The speed-up, how it was timed, and whether it is a change at all."""
    if not speed.get("value"):
        return "no speed-up (the reference has no timed passes on this device)"
    text = f"speed-up {speed['value']:.2f}x{_interval(speed, '.2f')}"
    if speed.get("timing") == "paired":
        verdict = ("faster" if speed["value"] > 1 else "slower") if significant else "no significant change"
        return text + f" paired over {speed['n_rounds']} rounds: {verdict}"
    return text + " timed apart from the reference: machine drift between the runs is not measured, so it is no " \
                  "test (use --paired)"


def summary_lines(cfg: RunConfig, results: dict, run_dir: Path) -> list[str]:
    """What was measured, in words a newcomer can read without the code."""
    m, run, env, stats = results["metrics"], results["run"], results["environment"], results["metrics"]["stats"]
    random = run["weights"] == "random"
    lines = [f"{cfg.technique}/{cfg.variant}: {m['n']} questions on {run['device']} ({env['device_name']}), "
             f"{cfg.dtype}, batch size {cfg.batch_size}, {cfg.decode} mode, {run['prompt_form']} prompt",
             f"  accuracy {m['accuracy']:.3f}{_interval(stats['accuracy'], '.3f')}, macro-F1 {m['macro_f1']:.3f}"
             f"{_interval(stats['macro_f1'], '.3f')} (95% bootstrap intervals)"
             + (f", {m['unparsed']} unparsed answers (counted wrong)" if cfg.decode == "generate" else "")
             + ("; weights: random, so these say nothing about the model" if random else ""),
             timing_line(m),
             memory_line(m, env["device_type"]),
             f"  time: load {m['load_s']:.1f} s, setup {m['setup_s']:.1f} s, cold pass {m['cold_pass_s']:.2f} s "
             f"(the pass the answers come from; includes warm-up)"]
    if "fidelity" in m:
        f, c = m["fidelity"], m["comparison"]
        speed = c.get("speedup") or {}
        against = f["reference"] if f["reference"] == PAIRED else f"reference {Path(f['reference']).name}"
        lines.append(f"  vs {against}: agreement {f['agreement']:.1f}%, mean KL "
                     f"{f['mean_kl'] if f['mean_kl'] is not None else float('nan'):.3g}, "
                     f"{c['paired']['right_to_wrong']} right->wrong / {c['paired']['wrong_to_right']} wrong->right "
                     f"({c['paired']['basis'].replace('_', ' ')}), McNemar p {c['paired']['mcnemar_p']:.3g}, "
                     + speedup_text(speed, c.get("significant_speedup")))
    lines.append(f"  results: {run_dir}/results.json")
    return lines


def print_summary(cfg: RunConfig, results: dict, run_dir: Path):
    print("\n".join(summary_lines(cfg, results, run_dir)))
