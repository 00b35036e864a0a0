"""Benchmark: tensor_experiments.py once per backend/mode over the same questions -> Markdown table + JSON.

Each configuration runs in its own process (fresh dynamo caches, memory given back). Options after `--` go to
every run unchanged (model, data, --limit, --batch-size, --dtype, ...).

    python tensor_rewriting/benchmark.py --configs eager:default,inductor:default,tvm:default \
        --out results/tensor-bench-tiny -- --model tiny-random --tokenizer-dir ../shared/data/biogpt-large \
        --data-dir ../shared/data/pubmedqa --limit 16 --wandb disabled
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tensor_experiments import MODES  # noqa: E402  (this folder's own script)

ALL = ",".join(f"{b}:{m}" for b, ms in MODES.items() for m in ms if m != "meta-schedule")


def run_one(backend: str, mode: str, out: Path, passthrough: list[str]) -> dict:
    name = f"{backend}-{mode}"
    cmd = [sys.executable, str(HERE / "tensor_experiments.py"), "--backend", backend, "--mode", mode,
           "--output-dir", str(out / "runs"), "--run-name", name, *passthrough]
    print("+", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    path = os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])  # this checkout's evaluation
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path})
    row = {"backend": backend, "mode": mode, "exit": proc.returncode, "wall_s": time.perf_counter() - t0}
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
        row["error"] = (errors or proc.stderr.strip().splitlines() or ["no output"])[-1]
        return row
    r = json.loads((out / "runs" / name / "results.json").read_text())
    m = r["metrics"]
    row.update(dtype=r["config"]["dtype"], n=m["n"], device=r["environment"]["device_name"],
               compilations=m["compile_compilations"], recompilations_in_passes=m["recompilations_in_passes"],
               setup_s=m["setup_s"], tune_s=m.get("compile_tune_s"), pass_s=m["pass_wall_s_median"],
               throughput_qps=m["throughput_qps"], latency_question_p50_ms=m["latency_question_ms"]["p50"],
               max_abs_logit_diff=m["eager_check"]["max_abs_logit_diff"], tolerance=m["eager_check"]["tolerance"],
               agreement_pct=m["eager_check"]["agreement_pct"], results=str(out / "runs" / name / "results.json"))
    return row


def markdown(rows: list[dict]) -> str:
    base = next((r["pass_s"] for r in rows if r["exit"] == 0 and r["backend"] == "eager"), None)
    lines = ["| backend | mode | dtype | compilations | setup s (compile/tune) | pass s | speedup vs eager | q/s "
             "| p50 ms/question | max abs logit diff vs eager (tol) | agreement % |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["exit"] != 0:
            lines.append(f"| {r['backend']} | {r['mode']} | | failed (exit {r['exit']}): {r['error']} "
                         "| | | | | | | |")
            continue
        speedup = f"{base / r['pass_s']:.2f}x" if base else "n/a"
        lines.append(f"| {r['backend']} | {r['mode']} | {r['dtype']} | {r['compilations']} | {r['setup_s']:.1f} "
                     f"| {r['pass_s']:.3f} | {speedup} | {r['throughput_qps']:.2f} "
                     f"| {r['latency_question_p50_ms']:.1f} "
                     f"| {r['max_abs_logit_diff']:.2e} ({r['tolerance']:.1e}) | {r['agreement_pct']:.0f} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default="eager:default,inductor:default,tvm:default",
                   help=f"comma-separated backend:mode pairs, or 'all' ({ALL})")
    p.add_argument("--out", default="results/tensor-bench", help="directory for runs/, table.md and table.json")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="after --: options passed to every run")
    args = p.parse_args()
    configs = [c.split(":") for c in (ALL if args.configs == "all" else args.configs).split(",")]
    for c in configs:
        if len(c) != 2 or c[0] not in MODES or c[1] not in MODES[c[0]]:
            p.error(f"bad config {':'.join(c)!r}; valid: {ALL},tvm:meta-schedule")
    passthrough = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [run_one(b, m, out, passthrough) for b, m in configs]
    table = markdown(rows)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "args": passthrough, "rows": rows}
    (out / "table.json").write_text(json.dumps(meta, indent=2))
    (out / "table.md").write_text(f"Run {meta['date']}: `{' '.join(passthrough)}`\n\n{table}")
    print(table)
    sys.exit(0 if all(r["exit"] == 0 for r in rows) else 1)


if __name__ == "__main__":
    main()
