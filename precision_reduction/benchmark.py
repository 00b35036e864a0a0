"""Benchmark every precision over the same questions; one comparison table (Markdown + the JSON it came from).

Each precision runs as its own process (so peak memory is its own); float32 runs first and is every other run's
--reference. A precision that fails on this device stays in the table with its error line. Arguments this script
does not know go to every run (model, data, batch size, decode, limit, device...).

    python precision_reduction/benchmark.py --out results/precision-bench-tiny --model tiny-random \
        --tokenizer-dir ../shared/data/biogpt-large --data-dir ../shared/data/pubmedqa --wandb disabled
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from precisions import PRECISIONS

SCRIPT = Path(__file__).resolve().parent / "precision_experiments.py"
OWN_FLAGS = ("--precision", "--output-dir", "--run-name", "--reference")
# Why a precision can be slower than bfloat16 (shown only when the measured throughput is lower).
SLOWER_BECAUSE = {
    "float32": "twice the bytes per weight to stream, and no 16-bit matmul units used",
    "float16": "PyTorch's CPU float16 kernels (matmul, SDPA, layer norm) are less optimized than its bfloat16 ones",
    "int8": "bitsandbytes' CPU LLM.int8 quantizes activations and dequantizes outputs with unfused PyTorch "
            "element-wise ops (casts, abs/max/round/mul), which cost far more than the int8 matmul itself",
    "int4": "bitsandbytes dequantizes the NF4 blocks to 16-bit for every matmul (its fused CPU 4-bit kernel "
            "comes from the `kernels` package, not installed here)",
    "float4": "bitsandbytes dequantizes the FP4 blocks to 16-bit for every matmul (its fused CPU 4-bit kernel "
              "comes from the `kernels` package, not installed here)",
    "fp8": "dynamic per-row activation scaling adds a pass per linear layer that small matmuls don't amortize",
}


def run_one(precision: str, passthrough: list[str], runs: Path, reference: Path | None) -> dict:
    cmd = [sys.executable, str(SCRIPT), *passthrough, "--precision", precision,
           "--output-dir", str(runs), "--run-name", precision]
    if reference is not None:
        cmd += ["--reference", str(reference)]
    print(f"== {precision}: {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    row = {"precision": precision, "returncode": proc.returncode, "process_s": time.perf_counter() - t0}
    if proc.returncode != 0:
        lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
        errors = [x for x in lines if x.startswith("error:") or "Error" in x]
        row["error"] = (errors or lines or ["(no output)"])[-1].strip()
        print(f"   failed: {row['error']}", flush=True)
        return row
    row.update(summarize(runs / precision))
    print(f"   {row['pass_s']:.3f} s/pass, {row['qps']:.2f} q/s", flush=True)
    return row


def summarize(run_dir: Path) -> dict:
    """The table's figures from one run's results.json."""
    r = json.loads((run_dir / "results.json").read_text())
    m, tel = r["metrics"], r["metrics"]["telemetry"]
    fid = m.get("fidelity") or {}
    cuda_peak = m["torch_peak_allocated_mib"]
    return {
        "device": r["environment"]["device_name"], "n": m["n"], "timed_passes": m["timed_passes"],
        "pass_s": m["pass_wall_s_median"], "p50_ms": m["latency_question_ms"]["p50"],
        "p99_ms": m["latency_question_ms"]["p99"], "qps": m["throughput_qps"],
        "peak_mib": cuda_peak if cuda_peak is not None else tel["rss_peak_mib"],
        "peak_source": "cuda_max_allocated" if cuda_peak is not None else "process_rss",
        "weight_mib": m["weight_bytes_measured"] / 2**20, "bytes_per_param": m["bytes_per_parameter"],
        "energy_j_per_q": tel["energy_j_per_question"], "energy_note": tel["nvml_error"],
        "agreement": fid.get("agreement"), "mean_kl": fid.get("mean_kl"),
        "compute_dtype": m["compute_dtype"], "int8_threshold": m["int8_threshold"],
        "double_quant": m["double_quant"], "load_s": m["load_s"], "setup_s": m["setup_s"],
        "accuracy": m["accuracy"], "weights": r["model"]["weights"], "cpu_util": tel["cpu_util_mean"],
    }


def fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(rows: list[dict]) -> str:
    bf16 = next((r["qps"] for r in rows if r["precision"] == "bfloat16" and "qps" in r), None)
    head = ("| precision | pass s | p50 ms/q | p99 ms/q | q/s | CPU util % | peak MiB | weights MiB | B/param | J/q "
            "| agree % vs fp32 | mean KL vs fp32 | note |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['precision']} | – | – | – | – | – | – | – | – | – | – | – | failed: {r['error']} |")
            continue
        note = f"slower than bfloat16: {SLOWER_BECAUSE[r['precision']]}" if bf16 and r["qps"] < bf16 else ""
        lines.append(f"| {r['precision']} | {r['pass_s']:.3f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
                     f"{r['qps']:.2f} | {fmt(r.get('cpu_util'), '.0f')} | {r['peak_mib']:.0f} | {r['weight_mib']:.1f} | {r['bytes_per_param']:.3f} | "
                     f"{fmt(r['energy_j_per_q'], '.3f')} | {fmt(r['agreement'], '.1f')} | "
                     f"{fmt(r['mean_kl'], '.2e')} | {note} |")
    ok = next((r for r in rows if "error" not in r), None)
    if ok:
        lines.append(f"\nDevice: {ok['device']}; n={ok['n']} questions; weights: {ok['weights']}; peak memory = "
                     f"{ok['peak_source']}; J/q: {'NVML' if ok['energy_j_per_q'] is not None else ok['energy_note']}; "
                     "CPU util % = the process' CPU time over the timed passes / their wall time "
                     "(100 = one core busy; low values mean other jobs shared the CPU).")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="directory for runs/, precision_table.md and precision_table.json")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=PRECISIONS,
                   help="precisions to run (float32 always runs first: it is the fidelity reference)")
    p.add_argument("--table-only", action="store_true",
                   help="run nothing: rebuild the table from OUT/precision_table.json and the runs in OUT/runs")
    args, passthrough = p.parse_known_args()
    clash = [f for f in OWN_FLAGS if any(a == f or a.startswith(f + "=") for a in passthrough)]
    if clash:
        p.error(f"{', '.join(clash)} are set by the benchmark itself")
    out = Path(args.out)
    runs = out / "runs"
    if args.table_only:
        meta = json.loads((out / "precision_table.json").read_text())
        meta["rows"] = [r if "error" in r else r | summarize(runs / r["precision"]) for r in meta["rows"]]
    else:
        order = ["float32"] + [x for x in PRECISIONS if x in args.precisions and x != "float32"]
        rows, reference = [], None
        for precision in order:
            row = run_one(precision, passthrough, runs, reference)
            if precision == "float32" and "error" not in row:
                reference = runs / "float32"
            rows.append(row)
        meta = {"command": " ".join([Path(sys.executable).name] + sys.argv),
                "date": time.strftime("%Y-%m-%d %H:%M %Z"), "rows": rows}
    table = markdown(meta["rows"])
    (out / "precision_table.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "precision_table.md").write_text(f"`{meta['command']}` ({meta['date']})\n\n" + table)
    print(table)


if __name__ == "__main__":
    main()
