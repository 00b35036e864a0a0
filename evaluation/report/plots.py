"""The report's PNG plots (matplotlib, Agg): one panel per comparable group of runs.

quality (accuracy 0-1, or agreement in % with the group's baseline for random weights) against latency with the
Pareto front; memory against throughput (GPU: the run's peak memory, NVML's where it allocates outside PyTorch;
CPU: the model footprint); energy per question (NVML) by run. Random-weight runs are hollow / hatched. Every panel
lists the runs of its group it leaves out and why; make_plots also returns that, for report.md.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..telemetry import NVML_PEAK_USED


def technique_colors(rows: list[dict]) -> dict:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {t: cmap(i % 10) for i, t in enumerate(sorted({r["technique"] for r in rows}))}


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both lower x (latency) and higher y (quality)."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def panels(groups: list[dict], title: str, height: float = 5.6):
    """One panel per group, stacked; room on the right for the key of numbered runs."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(groups), 1, figsize=(11.5, height * len(groups)), squeeze=False)
    fig.suptitle(title, fontsize=13)
    return fig, list(axes.flat)


def key_height(rows: list[dict]) -> float:
    """Panel height (inches) that fits the longest key: 9 pt per run."""
    most = max((sum(r["group"] == g for r in rows) for g in {r["group"] for r in rows}), default=0)
    return max(5.6, 1.6 + most * 9 / 72)


def group_title(g: dict) -> str:
    random = " — RANDOM WEIGHTS" if "random" in g["weights"] else ""
    return f"group {g['name']}: {g['device_name']} ({g['device_type']}), {g['model']}{random}\n" \
           f"{g['question_set']}, decode {g['decode']}"


def scatter(ax, rows, xs, ys, colors):
    """One point per run: filled for real weights, hollow for random weights. Each point carries the run's
    number; the key right of the panel names it (technique/variant), so dense clusters stay readable."""
    for r, x, y in zip(rows, xs, ys):
        c = colors[r["technique"]]
        random = r["weights"] == "random"
        marker = "*" if r["technique"] == "baseline" else "^" if r["nvml_peak"] else "o"
        ax.scatter([x], [y], s=60 if r["technique"] != "baseline" else 140, marker=marker,
                   facecolors="none" if random else [c], edgecolors=[c], linewidths=1.6, zorder=3)
        label = ax.annotate(str(r["plot_id"]) + ("!" if r.get("repeat_flag") else ""), (x, y), xytext=(5, 3),
                            textcoords="offset points", fontsize=8, color=c, fontweight="bold",
                            arrowprops=dict(arrowstyle="-", color=c, alpha=0.4, lw=0.6, shrinkA=0, shrinkB=4))
        label.set_gid("point-label")
    for i, r in enumerate(sorted(rows, key=lambda r: r["plot_id"])):
        ax.annotate(f"{r['plot_id']:>2}  {r['technique']}/{r['variant']}"
                    + (" (random w.)" if r["weights"] == "random" else "")
                    + ("  (!: repeats disagree)" if r.get("repeat_flag") else ""),
                    (1.02, 1.0), xycoords="axes fraction", xytext=(0, -9 * i), textcoords="offset points",
                    va="top", fontsize=7, color=colors[r["technique"]], annotation_clip=False)
    ax.margins(0.12)


def spread_labels(ax, labels, step_pt=6, tries=16):
    """Nudge labels up/down in small steps until they overlap neither one another nor leave the panel
    (greedy, left to right)."""
    from matplotlib.text import Text

    renderer = ax.figure.canvas.get_renderer()
    box = lambda t: Text.get_window_extent(t, renderer)  # noqa: E731  the text alone, without its leader line
    panel = ax.get_window_extent(renderer)
    placed = []
    for text in sorted(labels, key=lambda t: t.xy[0]):
        x0, y0 = text.get_position()
        for k in range(tries + 1):
            if k == tries:  # no free place nearby: keep it beside its point
                text.set_position((x0, y0))
                break
            text.set_position((x0, y0 + step_pt * ((k + 1) // 2) * (1 if k % 2 else -1)))
            b = box(text)
            if panel.y0 <= b.y0 and b.y1 <= panel.y1 and not any(b.overlaps(p) for p in placed):
                break
        placed.append(box(text))


def legend(ax, colors, rows, pareto=False):
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", color=colors[t], label=t)
               for t in sorted({r["technique"] for r in rows})]
    if any(r["weights"] == "random" for r in rows):
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="gray",
                              label="hollow = random weights"))
    if pareto:
        handles.append(Line2D([], [], linestyle="--", color="black", alpha=0.6, label="Pareto front"))
    ax.legend(handles=handles, fontsize=7, loc="best")


def log_if_wide(ax, values):
    """Log x axis when the values span more than 8x, with plain numbers (20, 50, 100) as tick labels."""
    from matplotlib.ticker import FuncFormatter

    values = [v for v in values if v and v > 0]
    if values and max(values) / min(values) > 8:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(
            lambda v, _: f"{v:g}" if v > 0 and f"{v:e}"[0] in "25" else ""))


def left_out_lines(ax, rows_left: list[tuple[dict, str]], offset: int):
    """Under the key beside the panel: the runs of this group not drawn, each with the reason (wrapped)."""
    import textwrap

    if not rows_left:
        return
    lines = ["left out:"]
    for r, why in rows_left:
        lines += textwrap.wrap(f"{r['plot_id']:>2}  {r['technique']}/{r['variant']}: {why}", 62,
                               subsequent_indent="      ")
    for i, text in enumerate(lines):
        ax.annotate(text, (1.02, 1.0), xycoords="axes fraction", xytext=(0, -9 * (offset + i) - 4),
                    textcoords="offset points", va="top", fontsize=7, color="dimgray",
                    fontweight="bold" if i == 0 else "normal", annotation_clip=False)


def quality_of(r: dict, random: bool, base: dict | None):
    """(y, reason it is missing) for the quality plot: agreement (%) with the group baseline for random weights,
    accuracy (0-1) for real ones."""
    if random:
        if r["is_group_baseline"]:
            return 100.0, None
        if r["agreement"] is not None:
            return r["agreement"], None
        if base is None:
            return None, "random weights and no baseline in the group to agree with"
        if not r.get("_pq") or not base.get("_pq"):
            return None, "random weights, no --reference fidelity and no per_question.csv to compare"
        return None, "no agreement figure"
    return (r["accuracy"], None) if r["accuracy"] is not None else (None, "no accuracy recorded")


def draw_front(ax, pts):
    """The Pareto front as a staircase bounding the region it dominates, from the bottom edge through every front
    point to the right edge, so a front of one point is still drawn. Returns the run names on it."""
    front = sorted((pts[i] for i in pareto_front([(x, y) for _, x, y in pts])), key=lambda p: p[1])
    xs, ys = [p[1] for p in front], [p[2] for p in front]
    x0, x1 = ax.get_xlim()
    y0, _ = ax.get_ylim()
    line_x, line_y = [xs[0]], [y0]
    for i, (x, y) in enumerate(zip(xs, ys)):
        line_x += [x, xs[i + 1] if i + 1 < len(xs) else x1]
        line_y += [y, y]
    ax.plot(line_x, line_y, "--", color="black", alpha=0.6, lw=1.1, zorder=1, gid="pareto-front")
    ax.scatter(xs, ys, s=170, facecolors="none", edgecolors="black", linewidths=0.9, zorder=2)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, ax.get_ylim()[1])
    return [p[0]["run"] for p in front], len(line_x)


def plot_quality_vs_latency(rows, groups, colors, path: Path) -> tuple[Path, dict]:
    fig, axes = panels(groups, "Quality against latency (upper left is better; dashed: Pareto front of the point "
                       "estimates, not a significance statement)", key_height(rows))
    info = {"groups": {}, "left_out": [], "notes": []}
    for ax, g in zip(axes, groups):
        members = [r for r in rows if r["group"] == g["name"]]
        base = next((r for r in members if r["is_group_baseline"]), None)
        random = "random" in g["weights"]
        if random:  # accuracy of random weights means nothing: plot agreement with the group's baseline
            ylabel = "agreement with the group baseline (%)"
        else:
            ylabel = "accuracy (0–1)"
        pts, left = [], []
        for r in members:
            y, why = quality_of(r, random, base)
            if r["p50_ms"] is None:
                why = "no latency recorded" + (f"; {why}" if why else "")
            if why:
                left.append((r, why))
            else:
                pts.append((r, r["p50_ms"], y))
        ax.set_title(group_title(g), fontsize=9)
        ax.set_xlabel("p50 latency per question (ms)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        gi = info["groups"][g["name"]] = {"ylabel": ylabel, "points": [p[0]["run"] for p in pts], "front": [],
                                          "front_vertices": 0}
        info["left_out"] += [{"group": g["name"], "plot_id": r["plot_id"], "run": r["run"], "reason": why}
                             for r, why in left]
        if not pts:
            ax.text(0.5, 0.5, "no run with both a latency and a quality figure\n(see the runs left out, right)",
                    ha="center", va="center", transform=ax.transAxes)
            left_out_lines(ax, left, 0)
            continue
        scatter(ax, *zip(*pts), colors)
        log_if_wide(ax, [x for _, x, _ in pts])
        lo, hi = ax.get_ylim()
        top = 100.0 if random else 1.0
        ax.set_ylim(max(lo, -0.01 * top), min(hi, 1.01 * top))  # no empty band above 100 % / 1.0
        unstable = [p for p in pts if p[0].get("repeat_flag")]
        stable = [p for p in pts if not p[0].get("repeat_flag")] or pts
        gi["front"], gi["front_vertices"] = draw_front(ax, stable)
        if unstable and len(stable) < len(pts):
            ax.text(0.01, 0.06, "not on the front: " + ", ".join(f"#{p[0]['plot_id']}" for p in unstable)
                    + " (repeats disagree in timing)", transform=ax.transAxes, fontsize=7, color="firebrick")
        if random:
            ax.text(0.01, 0.01, "random weights: the baseline is 100 % by definition",
                    transform=ax.transAxes, fontsize=7, color="gray")
        legend(ax, colors, [p[0] for p in pts], pareto=True)
        left_out_lines(ax, left, len(pts))
    if any(r.get("reference_source") == "per_question.csv" for r in rows):
        info["notes"].append("Agreement marked `(csv)` in the table was computed by the report from per_question.csv "
                             "against the group's baseline (the run had no `--reference`).")
    return save(fig, path), info


def memory_of(r: dict) -> tuple:
    """(MiB, reason it is missing) for the memory plot."""
    if r["qps"] is None:
        return None, "no throughput recorded"
    if r["mem_mib"] is None:
        return None, {"footprint": "no model.footprint_bytes recorded",
                      NVML_PEAK_USED: "no NVML peak recorded (the run allocates outside PyTorch: torch's peak "
                                      "would miss its memory)"}.get(r["mem_source"], "no metrics.peak_memory recorded")
    return r["mem_mib"], None


def plot_memory_vs_throughput(rows, groups, colors, path: Path) -> tuple[Path, dict]:
    fig, axes = panels(groups, "Memory against throughput (lower right is better)", key_height(rows))
    info = {"groups": {}, "left_out": [], "notes": []}
    for ax, g in zip(axes, groups):
        members = [r for r in rows if r["group"] == g["name"]]
        pts, left = [], []
        for r in members:
            y, why = memory_of(r)
            (left.append((r, why)) if why else pts.append(r))
        if g["device_type"] == "cuda":
            ylabel = "peak GPU memory (MiB): torch peak allocated"
            if any(r["nvml_peak"] for r in members):
                ylabel += ";\n▲: NVML peak in use (allocates outside PyTorch), CUDA context included"
            title_note = ""
        else:
            ylabel = "model footprint (MiB, weights as stored)"
            title_note = "\nCPU: model footprint, not process RSS (the runtime's ~600 MiB would hide the weights)"
        ax.set_title(group_title(g) + title_note, fontsize=9)
        ax.set_xlabel("throughput (questions/s)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        info["groups"][g["name"]] = {"ylabel": ylabel, "points": [r["run"] for r in pts],
                                     "values": {r["run"]: r["mem_mib"] for r in pts},
                                     "sources": {r["run"]: r["mem_source"] for r in pts}}
        info["left_out"] += [{"group": g["name"], "plot_id": r["plot_id"], "run": r["run"], "reason": why}
                             for r, why in left]
        if not pts:
            ax.text(0.5, 0.5, "no run with both figures (see the runs left out, right)", ha="center", va="center",
                    transform=ax.transAxes)
            left_out_lines(ax, left, 0)
            continue
        scatter(ax, pts, [r["qps"] for r in pts], [r["mem_mib"] for r in pts], colors)
        log_if_wide(ax, [r["qps"] for r in pts])
        ax.set_ylim(0, ax.get_ylim()[1])  # from zero: a footprint halved should look halved
        legend(ax, colors, pts)
        left_out_lines(ax, left, len(pts))
    if any(r["device_type"] != "cuda" for r in rows):
        info["notes"].append("CPU groups plot the model footprint (results.json `model.footprint_bytes`); the peak "
                             "RSS is in the table.")
    if any(r["nvml_peak"] for r in rows):
        info["notes"].append("Runs marked ▲ allocate outside PyTorch's allocator, so torch's peak would miss their "
                             "memory: they plot NVML's peak memory in use (`metrics.peak_memory`), CUDA context "
                             "included.")
    return save(fig, path), info


def plot_energy(rows, groups, colors, path: Path) -> tuple[Path, dict]:
    import matplotlib.pyplot as plt

    info = {"groups": {}, "notes": [], "left_out": [
        {"group": r["group"], "plot_id": r["plot_id"], "run": r["run"],
         "reason": f"no energy figure ({r['energy_note']})"} for r in rows if r["energy_j_per_q"] is None]}
    measured = [g for g in groups if any(r["group"] == g["name"] and r["energy_j_per_q"] is not None for r in rows)]
    missing = [g["name"] for g in groups if g not in measured]
    if not measured:
        fig, ax = plt.subplots(figsize=(8, 2.8))
        ax.axis("off")
        reasons = sorted({r["energy_note"] for r in rows if r["energy_note"]})
        ax.text(0.5, 0.5, "Energy per question: no run has an energy figure.\n"
                "Energy is read from NVML on NVIDIA GPUs only; "
                f"group(s) {', '.join(missing)} ran without it:\n" + "\n".join(reasons),
                ha="center", va="center", fontsize=10, wrap=True)
        return save(fig, path), info
    fig, axes = panels(measured, "Energy per question by run (NVML; lower is better)"
                       + (f"\ngroup(s) {', '.join(missing)}: not measured (no NVML)" if missing else ""),
                       height=max(3.0, 1.2 + 0.35 * max(sum(r["group"] == g["name"] for r in rows) for g in measured)))
    for ax, g in zip(axes, measured):
        members = [r for r in rows if r["group"] == g["name"] and r["energy_j_per_q"] is not None]
        labels = [f"{r['technique']}/{r['variant']}" + (" (random w.)" if r["weights"] == "random" else "")
                  for r in members]
        bars = ax.barh(range(len(members)), [r["energy_j_per_q"] for r in members],
                       color=[colors[r["technique"]] for r in members],
                       hatch=["//" if r["weights"] == "random" else "" for r in members])
        ax.bar_label(bars, fmt="%.3g", fontsize=7, padding=2)
        ax.set_yticks(range(len(members)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("energy per question (J)")
        ax.set_title(group_title(g), fontsize=9)
        ax.grid(alpha=0.3, axis="x")
        info["groups"][g["name"]] = {"points": [r["run"] for r in members]}
    return save(fig, path), info


def save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt
    from matplotlib.text import Annotation

    fig.tight_layout()
    for ax in fig.axes:  # once the layout is final, so the label boxes are where they will be drawn
        spread_labels(ax, [t for t in ax.texts if isinstance(t, Annotation) and t.get_gid() == "point-label"])
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(rows: list[dict], groups: list[dict], out: Path) -> tuple[list[Path], dict]:
    """(the PNGs written, {plot name: {"groups": {group: what was drawn}, "left_out": [{"group", "plot_id", "run",
    "reason"}], "notes": [...]}})."""
    import matplotlib

    matplotlib.use("Agg")
    if not rows:
        return [], {}
    colors = technique_colors(rows)
    paths, info = [], {}
    for fn, name in ((plot_quality_vs_latency, "quality_vs_latency"), (plot_memory_vs_throughput,
                                                                       "memory_vs_throughput"),
                     (plot_energy, "energy_per_question")):
        path, info[name] = fn(rows, groups, colors, out / "plots" / f"{name}.png")
        paths.append(path)
    return paths, info
