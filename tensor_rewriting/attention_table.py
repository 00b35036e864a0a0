"""Attention kernels as a technique: eager vs SDPA per-token latency and peak memory over batch size x sequence length.

The Hugging Face BioGPT documentation reports an inference table for microsoft/biogpt in float16 on a GPU: for each
batch size x sequence length, with a padding mask, the per-token latency of eager attention and of SDPA, the
speed-up, and the peak memory of each. This script makes the same table on this repo's random-weight presets, on
whatever device it runs on, and adds what the documentation leaves out: the spread of the timings, the same cells
without padding, and a check that both kernels compute the same thing.

What is timed: the decoder forward `model.biogpt(input_ids, attention_mask, position_ids)` with no KV cache, as in
the harness's score decoding (`evaluation.answering.answer_logits`) minus its one-row LM head, and as the
documentation's "AutoModel head" (BioGptModel). The inputs are random token ids; with `--masks padded` each row
ends in padding (right padding, as BioGPT wants), a seeded 10-25% of the row by default.

Both kernels run on the *same* model: the attention implementation is switched between calls with
transformers' `set_attn_implementation`, and the switch is checked by watching which torch functions a forward
calls (`scaled_dot_product_attention` for SDPA, `softmax` for eager). Eager and SDPA calls are interleaved in the
timed loop, so that load from other processes on a shared machine falls on both alike.

    python tensor_rewriting/attention_table.py --model biogpt-base-random --batch-sizes 1 2 4 \
        --seq-lens 128 256 512 --dtype float32 --out results/attention-table-base
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from evaluation import PRESETS, UsageError, footprint_bytes, resolve_device, run_main
from evaluation.modeling import DTYPES, random_model
from evaluation.results import environment
from evaluation.telemetry import Clock, latency_stats
from tensor_rewriting.hot_path import TOLERANCE

IMPLEMENTATIONS = ("eager", "sdpa")
MB = 2**20


class OneLineErrors(argparse.ArgumentParser):
    def error(self, message):  # bad flags end like every UsageError here: one line, exit code 2
        self.exit(2, f"error: {message}\n")


def make_parser() -> argparse.ArgumentParser:
    p = OneLineErrors(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default="biogpt-base-random", choices=list(PRESETS),
                   help="random-weight preset (biogpt-base-random: microsoft/biogpt's architecture with "
                        "BioGPT-Large's vocabulary)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4], help="rows of the table: batch sizes")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[128, 256, 512],
                   help="rows of the table: tokens per sequence (at most the preset's max_position_embeddings)")
    p.add_argument("--masks", nargs="+", choices=["none", "padded"], default=["none", "padded"],
                   help="none: every position real (SDPA then takes its is_causal path, no mask tensor); "
                        "padded: each row ends in padding, as with a padded batch of prompts")
    p.add_argument("--pad-range", type=float, nargs=2, default=[0.10, 0.25], metavar=("LOW", "HIGH"),
                   help="padded rows: the padded share of each row is drawn uniformly from [LOW, HIGH]")
    p.add_argument("--layers", type=int, default=None,
                   help="keep only the first N decoder layers (default: all). Every layer does the same work, so "
                        "the eager/SDPA ratio holds at full depth while a grid costs N/depth of the time; "
                        "per-token latency and weights are the cut model's")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32", help="weights and activations")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto: CUDA when present")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads; unset: torch's own default")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed calls per kernel and cell; the last one also gives the peak memory and the "
                        "outputs compared between kernels")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per kernel and cell")
    p.add_argument("--seed", type=int, default=0, help="seed for the weights, the token ids and the padding")
    p.add_argument("--out", default=None, help="write table.md and table.json into this directory")
    return p


def check_args(args) -> None:
    """Bad input ends the run before any model is built."""
    for flag, values in (("--batch-sizes", args.batch_sizes), ("--seq-lens", args.seq_lens)):
        if min(values) <= 0:
            raise UsageError(f"{flag} must be positive integers, got {min(values)}")
    max_positions = PRESETS[args.model]["max_position_embeddings"]
    if max(args.seq_lens) > max_positions:
        raise UsageError(f"--seq-lens {max(args.seq_lens)} is beyond {args.model}'s {max_positions} positions")
    low, high = args.pad_range
    if not 0 <= low <= high < 1:
        raise UsageError(f"--pad-range must satisfy 0 <= LOW <= HIGH < 1, got {low} {high}")
    if args.warmup < 1 or args.repeats < 1:
        raise UsageError(f"--warmup and --repeats must be at least 1, got {args.warmup} and {args.repeats}")
    depth = PRESETS[args.model]["num_hidden_layers"]
    if args.layers is not None and not 1 <= args.layers <= depth:
        raise UsageError(f"--layers must be between 1 and {args.model}'s {depth}, got {args.layers}")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads must be at least 1, got {args.threads}")


def make_inputs(batch: int, seq_len: int, padded: bool, pad_range, config, generator, device) -> dict:
    """Random non-special token ids [batch, seq_len]; padded rows end in pad tokens with attention_mask 0."""
    ids = torch.randint(4, config.vocab_size, (batch, seq_len), generator=generator)
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    if padded:
        low, high = pad_range
        shares = low + (high - low) * torch.rand(batch, generator=generator)
        for row, share in enumerate(shares.tolist()):
            real = max(1, seq_len - round(share * seq_len))
            ids[row, real:] = config.pad_token_id
            mask[row, real:] = 0
    positions = (mask.cumsum(1) - 1).clamp(min=0)  # as evaluation.answering.make_batches
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "position_ids": positions.to(device)}


def decoder_forward(model, inputs: dict) -> torch.Tensor:
    return model.biogpt(**inputs, use_cache=False).last_hidden_state


class CalledFunctions(TorchFunctionMode):
    """Names of the torch functions called inside the block."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.add(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def check_attention_path(model, implementation: str, inputs: dict) -> None:
    """set_attn_implementation is a config switch: prove the forward really takes that kernel."""
    model.set_attn_implementation(implementation)
    with CalledFunctions() as called:
        decoder_forward(model, inputs)
    took_sdpa = "scaled_dot_product_attention" in called.names
    if took_sdpa != (implementation == "sdpa") or (implementation == "eager" and "softmax" not in called.names):
        raise RuntimeError(f"asked for {implementation} attention but the forward called "
                           f"{'scaled_dot_product_attention' if took_sdpa else 'no SDPA'}")


def allocation_peak(events) -> int:
    """Highest running total of (de)allocation sizes, in time order: the peak above what was live at the start."""
    total = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        total += event.nbytes()
        peak = max(peak, total)
    return peak


def forward_with_peak(model, inputs: dict, device: torch.device) -> tuple[torch.Tensor, int]:
    """(output, bytes allocated at the forward's peak above what was live before it).

    CUDA: the caching allocator's max_memory_allocated. CPU has no such counter, so the forward runs under
    torch.profiler with profile_memory=True, which records every allocation and free of the CPU allocator,
    including those inside kernels; the peak is the highest running sum of them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        out = decoder_forward(model, inputs)
        torch.cuda.synchronize(device)
        return out, torch.cuda.max_memory_allocated(device) - start
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        out = decoder_forward(model, inputs)
    # the raw event stream: prof.events() nets each op's allocations, which hides peaks inside an op
    memory = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    return out, allocation_peak(memory)


def spread(samples_ms: list[float]) -> dict:
    """latency_stats plus p10 (with few samples the quantiles interpolate between the extremes)."""
    stats = latency_stats(samples_ms)
    q = statistics.quantiles(samples_ms, n=10, method="inclusive") if len(samples_ms) > 1 else samples_ms * 9
    return {**stats, "p10": q[0]}


def agreement(model, outputs: dict, inputs: dict, dtype: str) -> dict:
    """SDPA against eager on the same inputs: last hidden state at real positions, and the full-vocabulary
    logits at each row's last real token. Tolerance as for compiled code (hot_path.TOLERANCE): the kernels
    reorder the same reductions."""
    real = inputs["attention_mask"].bool()
    eager, sdpa = (outputs[i].float()[real] for i in IMPLEMENTATIONS)
    last = real.sum(1) - 1
    rows = torch.arange(real.shape[0], device=last.device)
    logits = {i: model.output_projection(outputs[i][rows, last]).float() for i in IMPLEMENTATIONS}
    atol, rtol = TOLERANCE[dtype]
    hidden_tol = atol + rtol * eager.abs().max().item()
    logits_tol = atol + rtol * logits["eager"].abs().max().item()
    hidden_diff = (sdpa - eager).abs().max().item()
    logits_diff = (logits["sdpa"] - logits["eager"]).abs().max().item()
    finite = all(bool(torch.isfinite(t).all()) for t in (sdpa, logits["sdpa"]))
    same_argmax = (logits["sdpa"].argmax(1) == logits["eager"].argmax(1)).float().mean().item()
    return {"max_abs_hidden_diff": hidden_diff, "hidden_tolerance": hidden_tol,
            "max_abs_logits_diff": logits_diff, "logits_tolerance": logits_tol,
            "argmax_agreement_pct": 100.0 * same_argmax,
            "passed": finite and hidden_diff <= hidden_tol and logits_diff <= logits_tol}


def measure_cell(model, inputs: dict, args, device: torch.device, weights: int) -> dict:
    """Warm-up, memory and agreement per kernel, then the timed calls with the kernels interleaved."""
    batch, seq_len = inputs["input_ids"].shape
    outputs, peaks = {}, {}
    for implementation in IMPLEMENTATIONS:
        model.set_attn_implementation(implementation)
        for _ in range(args.warmup - 1):
            decoder_forward(model, inputs)
        outputs[implementation], peaks[implementation] = forward_with_peak(model, inputs, device)
    check = agreement(model, outputs, inputs, args.dtype)
    del outputs

    clock, samples = Clock(device), {i: [] for i in IMPLEMENTATIONS}
    for r in range(args.repeats):
        for implementation in IMPLEMENTATIONS if r % 2 == 0 else IMPLEMENTATIONS[::-1]:
            model.set_attn_implementation(implementation)
            clock.sync()
            start = clock.mark()
            decoder_forward(model, inputs)
            end = clock.mark()
            clock.sync()
            samples[implementation].append(clock.ms(start, end))

    tokens = batch * seq_len
    row = {"batch_size": batch, "seq_len": seq_len,
           "padded_pct": 100.0 * (1 - inputs["attention_mask"].float().mean().item()), "agreement": check}
    for implementation in IMPLEMENTATIONS:
        stats = spread(samples[implementation])
        row[implementation] = {"forward_ms": stats, "samples_ms": samples[implementation],
                               "per_token_ms": {k: stats[k] / tokens for k in ("p10", "p50", "p90")},
                               "forward_peak_mb": peaks[implementation] / MB,
                               "peak_mb": (weights + peaks[implementation]) / MB}
    eager, sdpa = row["eager"], row["sdpa"]
    # the documentation's definitions: eager / SDPA - 1, for time and for memory
    row["speedup_pct"] = 100.0 * (eager["forward_ms"]["p50"] / sdpa["forward_ms"]["p50"] - 1)
    row["paired_speedup_pct"] = 100.0 * (statistics.median(
        e / s for e, s in zip(samples["eager"], samples["sdpa"])) - 1)
    row["mem_saved_pct"] = 100.0 * (eager["peak_mb"] / sdpa["peak_mb"] - 1)
    row["forward_mem_saved_pct"] = (100.0 * (eager["forward_peak_mb"] / sdpa["forward_peak_mb"] - 1)
                                    if sdpa["forward_peak_mb"] else None)
    return row


def measure_grid(model, grid, args, generator, device: torch.device) -> list[dict]:
    weights = footprint_bytes(model)
    rows = []
    bar = tqdm(grid, desc=f"{args.model} {args.dtype}", unit="cell")
    for batch, seq_len, mask in bar:
        bar.set_postfix_str(f"{batch} x {seq_len}, mask {mask}")
        inputs = make_inputs(batch, seq_len, mask == "padded", args.pad_range, model.config, generator, device)
        rows.append({"mask": mask, **measure_cell(model, inputs, args, device, weights)})
    return rows


def latency_cell(side: dict) -> str:
    t = side["per_token_ms"]
    return f"{t['p50']:.4f} ({t['p10']:.4f}–{t['p90']:.4f})"


def markdown(rows: list[dict], meta: dict) -> str:
    env = meta["environment"]
    cut = f" cut to {meta['layers']} of {meta['preset_layers']} layers" * (meta["layers"] < meta["preset_layers"])
    lines = [f"# Attention kernels: eager vs SDPA, {meta['model']}{cut} ({meta['dtype']}, {meta['device']})", "",
             f"- device: {env['device_name']} ({env['device_type']}), {env['torch_threads']} torch threads, "
             f"torch {env['torch']}, transformers {env['transformers']}",
             f"- date: {env['date']}; git commit: {env['git_commit']}",
             f"- command: `{meta['command']}`",
             f"- timed: `model.biogpt(...)` decoder forward, no KV cache; {meta['warmup']} warm-up + "
             f"{meta['repeats']} timed calls per kernel and cell, eager and SDPA interleaved",
             "- per-token latency: forward time / (batch x seq_len), median (p10–p90); "
             "speed-up % = eager / SDPA - 1 of the medians (the documentation's definition); paired: the median "
             "of that ratio over back-to-back eager/SDPA call pairs, which cancels slow drifts in machine load",
             f"- peak mem: weights ({meta['weights_mb']:.0f} MB) + the forward's allocation peak "
             f"({meta['memory_measure']}); mem saved % = eager / SDPA - 1; fwd peak: the forward's peak alone",
             "- max abs Δ: SDPA vs eager, last hidden state at real positions / full-vocabulary logits at each "
             "row's last real token, with the tolerance (atol + rtol x max |eager|)", "",
             "| batch_size | seq_len | mask (padded %) | per-token latency eager (ms) | per-token latency SDPA (ms) "
             "| speedup (%) | paired speedup (%) | mem eager (MB) | mem SDPA (MB) | mem saved (%) | fwd peak eager (MB) "
             "| fwd peak SDPA (MB) | max abs Δ hidden (tol) | max abs Δ logits (tol) | agree |",
             "|" + "---|" * 15]
    for r in rows:
        a = r["agreement"]
        mask = f"{r['mask']} ({r['padded_pct']:.0f}%)" if r["mask"] == "padded" else "none"
        lines.append(
            f"| {r['batch_size']} | {r['seq_len']} | {mask} | {latency_cell(r['eager'])} | {latency_cell(r['sdpa'])} "
            f"| {r['speedup_pct']:.1f} | {r['paired_speedup_pct']:.1f} | {r['eager']['peak_mb']:.0f} | {r['sdpa']['peak_mb']:.0f} "
            f"| {r['mem_saved_pct']:.1f} | {r['eager']['forward_peak_mb']:.1f} | {r['sdpa']['forward_peak_mb']:.1f} "
            f"| {a['max_abs_hidden_diff']:.1e} ({a['hidden_tolerance']:.0e}) "
            f"| {a['max_abs_logits_diff']:.1e} ({a['logits_tolerance']:.0e}) "
            f"| {'yes' if a['passed'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main():
    args = make_parser().parse_args()
    check_args(args)
    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    depth = PRESETS[args.model]["num_hidden_layers"]
    model = random_model(args.model, args.seed, DTYPES[args.dtype], device, num_hidden_layers=args.layers or depth)
    generator = torch.Generator().manual_seed(args.seed)
    grid = [(b, t, m) for b in args.batch_sizes for t in args.seq_lens for m in args.masks]
    with torch.inference_mode():
        probe = make_inputs(2, 8, True, (0.25, 0.25), model.config, generator, device)
        for implementation in IMPLEMENTATIONS:
            check_attention_path(model, implementation, probe)
        rows = measure_grid(model, grid, args, generator, device)
    weights = footprint_bytes(model)

    meta = {"model": args.model, "weights": "random", "layers": args.layers or depth, "preset_layers": depth,
            "dtype": args.dtype, "device": device.type,
            "warmup": args.warmup, "repeats": args.repeats, "pad_range": args.pad_range, "seed": args.seed,
            "weights_mb": weights / MB,
            "timed": "model.biogpt(input_ids, attention_mask, position_ids), use_cache=False",
            "memory_measure": "torch.cuda.max_memory_allocated" if device.type == "cuda"
            else "torch.profiler profile_memory CPU allocator events",
            "command": shlex.join([os.path.basename(sys.executable)] + sys.argv),
            "environment": environment(device)}
    table = markdown(rows, meta)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text(table)
        (out / "table.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        print(f"wrote {out / 'table.md'} and {out / 'table.json'}")
    failed = [f"{r['batch_size']} x {r['seq_len']} ({r['mask']})" for r in rows if not r["agreement"]["passed"]]
    if failed:
        print(f"SDPA and eager disagree beyond the tolerance in: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
