"""The report's PNG plots (matplotlib, Agg): one panel per comparable group of runs.

quality (accuracy, or agreement with the reference for random weights) against latency with the Pareto front;
peak memory against throughput; energy per question (NVML) by run. Random-weight runs are hollow / hatched.
"""
from __future__ import annotations

import math
from pathlib import Path


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
        ax.scatter([x], [y], s=60 if r["technique"] != "baseline" else 140,
                   marker="o" if r["technique"] != "baseline" else "*",
                   facecolors="none" if random else [c], edgecolors=[c], linewidths=1.6, zorder=3)
        label = ax.annotate(str(r["plot_id"]), (x, y), xytext=(5, 3), textcoords="offset points", fontsize=8,
                            color=c, fontweight="bold",
                            arrowprops=dict(arrowstyle="-", color=c, alpha=0.4, lw=0.6, shrinkA=0, shrinkB=4))
        label.set_gid("point-label")
    for i, r in enumerate(sorted(rows, key=lambda r: r["plot_id"])):
        ax.annotate(f"{r['plot_id']:>2}  {r['technique']}/{r['variant']}"
                    + (" (random w.)" if r["weights"] == "random" else ""),
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


def legend(ax, colors, rows):
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", color=colors[t], label=t)
               for t in sorted({r["technique"] for r in rows})]
    if any(r["weights"] == "random" for r in rows):
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color="gray",
                              label="hollow = random weights"))
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


def plot_quality_vs_latency(rows, groups, colors, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = panels(groups, "Quality against latency (Pareto front: dashed; upper left is better)",
                       key_height(rows))
    for ax, g in zip(axes, groups):
        members = [r for r in rows if r["group"] == g["name"] and r["p50_ms"] is not None]
        random = "random" in g["weights"]
        if random:  # accuracy of random weights means nothing: plot agreement with the reference run
            ylabel = "agreement with reference run (%)"
            referenced = {r["reference"] for r in members}
            ys = [r["agreement"] if r["agreement"] is not None else (100.0 if r["run"] in referenced else None)
                  for r in members]
        else:
            ylabel = "accuracy (%)"
            ys = [100 * r["accuracy"] if r["accuracy"] is not None else None for r in members]
        pts = [(r, r["p50_ms"], y) for r, y in zip(members, ys) if y is not None]
        ax.set_title(group_title(g), fontsize=9)
        ax.set_xlabel("p50 latency per question (ms)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if not pts:
            ax.text(0.5, 0.5, "no run with a quality figure\n(random weights need --reference)",
                    ha="center", va="center", transform=ax.transAxes)
            continue
        scatter(ax, *zip(*pts), colors)
        front = sorted((pts[i][1], pts[i][2]) for i in pareto_front([(x, y) for _, x, y in pts]))
        ax.plot(*zip(*front), "--", color="black", alpha=0.6, drawstyle="steps-post", label="Pareto front")
        ax.scatter(*zip(*front), s=160, facecolors="none", edgecolors="black", linewidths=0.8, zorder=2)
        log_if_wide(ax, [x for _, x, _ in pts])
        lo, hi = ax.get_ylim()
        ax.set_ylim(max(lo, -1), min(hi, 101))  # percentages: no empty band above 100
        if random:
            ax.text(0.01, 0.01, "random weights: the reference run is 100% by definition",
                    transform=ax.transAxes, fontsize=7, color="gray")
        legend(ax, colors, [p[0] for p in pts])
    return save(fig, path)


def plot_memory_vs_throughput(rows, groups, colors, path: Path) -> Path:
    fig, axes = panels(groups, "Peak memory against throughput (lower right is better)", key_height(rows))
    for ax, g in zip(axes, groups):
        members = [r for r in rows if r["group"] == g["name"] and r["qps"] is not None and r["peak_mib"] is not None]
        ax.set_title(group_title(g), fontsize=9)
        source = "GPU: torch peak allocated" if g["device_type"] == "cuda" else "CPU: process peak RSS"
        ax.set_xlabel("throughput (questions/s)")
        ax.set_ylabel(f"peak memory (MiB, {source})")
        ax.grid(alpha=0.3)
        if not members:
            ax.text(0.5, 0.5, "no run with both figures", ha="center", va="center", transform=ax.transAxes)
            continue
        scatter(ax, members, [r["qps"] for r in members], [r["peak_mib"] for r in members], colors)
        log_if_wide(ax, [r["qps"] for r in members])
        legend(ax, colors, members)
    return save(fig, path)


def plot_energy(rows, groups, colors, path: Path) -> Path:
    import matplotlib.pyplot as plt

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
        return save(fig, path)
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
    return save(fig, path)


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


def make_plots(rows: list[dict], groups: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    if not rows:
        return []
    colors = technique_colors(rows)
    return [plot_quality_vs_latency(rows, groups, colors, out / "plots" / "quality_vs_latency.png"),
            plot_memory_vs_throughput(rows, groups, colors, out / "plots" / "memory_vs_throughput.png"),
            plot_energy(rows, groups, colors, out / "plots" / "energy_per_question.png")]
