"""Pruning benchmark: each strategy over a sparsity sweep, against the same model dense; a table, JSON and a plot.

Every run is pruning/pruning.py in its own process; options this script does not know go to each run unchanged.

    python pruning/benchmark.py --out results/pruning-benchmark -- --model tiny-random \
        --tokenizer-dir ../shared/data/biogpt-large --data-dir ../shared/data/pubmedqa --limit 40 --wandb disabled
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STRATEGIES = ["unstructured", "structured", "block", "2:4"]


def run(out: Path, name: str, args: list[str]) -> dict:
    """One pruning run; its results.json."""
    cmd = [sys.executable, str(HERE / "pruning.py"), *args, "--output-dir", str(out / "runs"), "--run-name", name]
    print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
    # this checkout's evaluation package first, whatever copy is installed
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"run {name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads((out / "runs" / name / "results.json").read_text())


def row(strategy: str, sparsity: float, results: dict) -> dict:
    m, model = results["metrics"], results["model"]
    fidelity = m.get("fidelity") or {}
    return {"strategy": strategy, "sparsity": sparsity, "measured": m["sparsity_measured"],
            "ffn_measured": m["sparsity_by_type"]["fc1"], "parameters": model["parameters"],
            "parameters_nonzero": m["parameters_nonzero"], "weight_bytes": model["weight_bytes"],
            "accuracy": m["accuracy"], "agreement": fidelity.get("agreement"), "mean_kl": fidelity.get("mean_kl"),
            "latency_ms_p50": m["latency_question_ms"]["p50"], "throughput_qps": m["throughput_qps"],
            "sparse_kernels": m["sparse_kernels"], "setup_s": m["setup_s"]}


def markdown(rows: list[dict], header: str) -> str:
    cols = ["strategy", "requested", "measured", "FFN (fc1)", "params (M)", "nonzero (M)", "weights (MB)",
            "accuracy %", "agree w/ dense %", "mean KL", "p50 ms/question", "q/s", "sparse kernels"]
    lines = [header, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        kl = "–" if r["mean_kl"] is None else f"{r['mean_kl']:.2e}"
        agree = "–" if r["agreement"] is None else f"{r['agreement']:.1f}"
        lines.append(f"| {r['strategy']} | {r['sparsity']:.2f} | {r['measured']:.3f} | {r['ffn_measured']:.3f} | "
                     f"{r['parameters'] / 1e6:.3f} | {r['parameters_nonzero'] / 1e6:.3f} | "
                     f"{r['weight_bytes'] / 1e6:.2f} | {100 * r['accuracy']:.1f} | {agree} | {kl} | "
                     f"{r['latency_ms_p50']:.2f} | {r['throughput_qps']:.1f} | {'yes' if r['sparse_kernels'] else 'no'} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [("accuracy", "accuracy (%)", 100), ("agreement", "agreement with dense (%)", 1),
              ("latency_ms_p50", "latency p50 (ms / question)", 1)]
    dense = rows[0]
    for ax, (key, label, scale) in zip(axes, panels):
        for strategy in STRATEGIES:
            pts = [r for r in rows[1:] if r["strategy"] == strategy]
            if pts:
                ax.plot([100 * r["sparsity"] for r in pts], [scale * (r[key] or 0) for r in pts], "o-",
                        label=strategy)
        if dense[key] is not None:
            ax.axhline(scale * dense[key], color="grey", ls="--", lw=1, label="dense")
        ax.set_xlabel("requested sparsity (%) [structured: FFN neurons removed]")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results/pruning-benchmark", help="directory for runs, table, JSON and plot")
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=STRATEGIES, help="strategies to sweep")
    p.add_argument("--sparsities", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.7],
                   help="sparsity sweep (2:4 always runs at 0.5 only)")
    args, run_args = p.parse_known_args()
    run_args = [a for a in run_args if a != "--"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    dense = run(out, "dense", [*run_args, "--strategy", "unstructured", "--sparsity", "0"])
    reference = ["--reference", str(out / "runs" / "dense")]
    rows = [row("dense", 0.0, dense)]
    for strategy in args.strategies:
        for sparsity in [0.5] if strategy == "2:4" else args.sparsities:
            name = f"{strategy.replace(':', 'of')}-{sparsity:g}"
            rows.append(row(strategy, sparsity, run(out, name, [*run_args, *reference, "--strategy", strategy,
                                                               "--sparsity", str(sparsity)])))

    env, cfg = dense["environment"], dense["config"]
    title = (f"pruning sweep: {cfg['model']} (weights: {cfg['weights']}), {dense['metrics']['n']} questions, "
             f"{env['device_name']}, {time.strftime('%Y-%m-%d')}")
    command = "python pruning/benchmark.py " + " ".join(sys.argv[1:])
    (out / "benchmark.json").write_text(json.dumps({"command": command, "title": title, "environment": env,
                                                    "rows": rows}, indent=2))
    table = markdown(rows, f"{title}\n\n`{command}`")
    (out / "benchmark.md").write_text(table)
    plot(rows, out / "benchmark.png", title)
    print(table)
    print(f"wrote {out}/benchmark.md, benchmark.json, benchmark.png")


if __name__ == "__main__":
    main()
