"""Benchmark: fp32 vs dynamic int8, weight-only int8/int4 and QAT on the same questions -> Markdown + JSON table.

Each variant is its own run of the script that owns it (baseline/baseline.py, quantization/*.py), one after the
other, so each loads its own model; the quantized runs take the fp32 run as --reference for fidelity. A variant
that its device does not support (int4 weight-only on a CPU) is listed with the script's one-line reason.

    python quantization/benchmark.py --model tiny-random --tokenizer-dir ../shared/data/biogpt-large \
        --data-dir ../shared/data/pubmedqa --limit 20 --out results/quant-bench-tiny
"""
import argparse
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {  # name: (script, its own flags)
    "fp32": ("baseline/baseline.py", []),
    "dynamic-int8": ("quantization/quant_int8_dynamic_eval.py", ["--scheme", "dynamic-int8"]),
    "dynamic-int8-torchao": ("quantization/quant_int8_dynamic_eval.py",  # the same as dynamic-int8 on CUDA
                             ["--scheme", "dynamic-int8", "--cpu-backend", "torchao"]),
    "weight-only-int8": ("quantization/quant_int8_dynamic_eval.py", ["--scheme", "weight-only-int8"]),
    "weight-only-int4": ("quantization/quant_int8_dynamic_eval.py", ["--scheme", "weight-only-int4"]),
    "qat-int8": ("quantization/qat.py", ["--weights", "int8"]),
    "qat-int4": ("quantization/qat.py", ["--weights", "int4"]),
}
FORWARDED = ["model", "tokenizer_dir", "data_dir", "limit", "batch_size", "device", "min_passes", "min_duration",
             "wandb"]


def make_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="tiny-random", help="preset, hub id or local model directory")
    p.add_argument("--tokenizer-dir", default=None, help="fairseq dict.txt + bpecodes directory (presets need it)")
    p.add_argument("--data-dir", default=None, help="PubMedQA directory (ori_pqal.json + test_ground_truth.json)")
    p.add_argument("--limit", type=int, default=20, help="the first N test PMIDs, the same for every variant")
    p.add_argument("--batch-size", type=int, default=16, help="questions per forward pass")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto", help="auto: CUDA when present")
    p.add_argument("--min-passes", type=int, default=2, help="timed passes per variant at least")
    p.add_argument("--min-duration", type=float, default=None, help="timed phase seconds at least per variant")
    p.add_argument("--wandb", choices=["auto", "online", "offline", "disabled"], default="disabled",
                   help="wandb mode passed to every run")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                   help="what to run (fp32 always runs first: it is the reference)")
    p.add_argument("--qat-steps", type=int, default=4, help="QAT fine-tuning steps (kept short: a speed exercise)")
    p.add_argument("--qat-lr", type=float, default=1e-5, help="QAT peak learning rate")
    p.add_argument("--out", default="results/quant-bench", help="runs go to OUT/<variant>/, the table to OUT/table.*")
    p.add_argument("--resume", action="store_true", help="keep a variant's run already in OUT instead of rerunning")
    return p


def run_variant(name: str, args, out: Path) -> dict:
    run_dir = out / name
    if args.resume and (run_dir / "results.json").is_file():
        return {"status": "reused"}
    script, flags = VARIANTS[name]
    shared = []
    for key in FORWARDED:
        value = getattr(args, key)
        if value is not None:
            shared += [f"--{key.replace('_', '-')}", str(value)]
    if name.startswith("qat"):
        flags = flags + ["--steps", str(args.qat_steps), "--lr", str(args.qat_lr)]
    if name != "fp32":
        flags = flags + ["--reference", str(out / "fp32")]
    cmd = [sys.executable, script, *shared, *flags, "--output-dir", str(out), "--run-name", name]
    print("$", " ".join(cmd), flush=True)
    done = subprocess.run(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        print(f"  {name}: not run ({reason})", flush=True)
        return {"status": "not run", "reason": reason, "returncode": done.returncode}
    return {"status": "ran"}


def linear_kind(kind: dict) -> str:
    """torchao: the weight's tensor subclass; torch.ao: the quantized module class and its weight dtype."""
    if kind["module"] == "torch.nn.modules.linear.Linear":
        return kind["weight_tensor"]
    return f"{kind['module'].replace('.modules.linear', '')} ({', '.join(kind['storage'].values())})"


def row(name: str, run_dir: Path, fp32: dict | None) -> dict:
    r = json.loads((run_dir / "results.json").read_text())
    m, q = r["metrics"], r["metrics"].get("quantization", {})
    fid = m.get("fidelity") or {}
    nbytes = q.get("quantized_weight_bytes", r["model"]["weight_bytes"])
    return {"variant": name, "backend": q.get("backend", "fp32 eager"), "n": m["n"], "pass_s": m["pass_wall_s_median"],
            "throughput_qps": m["throughput_qps"],
            "speedup_vs_fp32": m["throughput_qps"] / fp32["throughput_qps"] if fp32 else None,
            "weight_bytes": nbytes, "weight_ratio_vs_fp32": nbytes / fp32["weight_bytes"] if fp32 else None,
            "agreement_pct": fid.get("agreement"), "mean_kl": fid.get("mean_kl"),
            "max_abs_logit_diff": fid.get("max_abs_logit_diff"), "setup_s": m.get("setup_s"),
            "train_loss": [q.get("train_loss_first"), q.get("train_loss_last")] if "train_s" in q else None,
            "linear_weight": ", ".join(linear_kind(k) for k in q.get("kernel_path", {}).get("decoder_linears", [])),
            "device": r["environment"]["device_name"], "weights": r["model"]["weights"]}


def markdown(rows: list[dict], skipped: dict) -> str:
    fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
    lines = ["| variant | backend | pass s | q/s | × fp32 | weight MiB | × fp32 bytes | agree % | mean KL | "
             "max Δlogit | setup s | Linear weight |", "|" + "---|" * 12]
    for r in rows:
        lines.append(f"| {r['variant']} | {r['backend']} | {fmt(r['pass_s'], '.2f')} | "
                     f"{fmt(r['throughput_qps'], '.2f')} | {fmt(r['speedup_vs_fp32'], '.2f')} | "
                     f"{r['weight_bytes'] / 2**20:.1f} | {fmt(r['weight_ratio_vs_fp32'], '.3f')} | "
                     f"{fmt(r['agreement_pct'], '.1f')} | {fmt(r['mean_kl'], '.2e')} | "
                     f"{fmt(r['max_abs_logit_diff'], '.3f')} | {fmt(r['setup_s'], '.1f')} | "
                     f"{r['linear_weight'] or 'float32 Tensor'} |")
    for name, reason in skipped.items():
        lines.append(f"| {name} | not run: {reason} |" + " |" * 10)
    return "\n".join(lines) + "\n"


def main():
    args = make_parser().parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = ["fp32"] + [v for v in args.variants if v != "fp32"]
    status = {name: run_variant(name, args, out) for name in names}
    if status["fp32"]["status"] == "not run":
        print(f"error: the fp32 reference run failed: {status['fp32']['reason']}", file=sys.stderr)
        sys.exit(2)
    fp32 = row("fp32", out / "fp32", None)
    rows = [fp32] + [row(n, out / n, fp32) for n in names[1:] if status[n]["status"] != "not run"]
    skipped = {n: s["reason"] for n, s in status.items() if s["status"] == "not run"}
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    table = markdown(rows, skipped)
    header = (f"Model {args.model} (weights: {fp32['weights']}), {fp32['n']} questions, batch {args.batch_size}, "
              f"device {fp32['device']}, {stamp}\n\n")
    (out / "table.md").write_text(header + table)
    (out / "table.json").write_text(json.dumps({"date": stamp, "command": " ".join(sys.argv), "rows": rows,
                                                "not_run": skipped, "status": status}, indent=2) + "\n")
    print(header + table + f"\nwritten: {out / 'table.md'}, {out / 'table.json'}")


if __name__ == "__main__":
    main()
