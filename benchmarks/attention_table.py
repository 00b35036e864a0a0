"""Attention kernels: eager vs SDPA per-token latency and peak memory over batch size x sequence length.

The Hugging Face BioGPT documentation reports an inference table for microsoft/biogpt in float16 on a GPU: for each
batch size x sequence length, with a padding mask, the per-token latency of eager attention and of SDPA, the
speed-up, and the peak memory of each. This makes the same table on this repo's random-weight presets, on whatever
device it runs on, and adds what the documentation leaves out: the spread of the timings, the same cells without
padding, and a check that both kernels compute the same thing.

What is timed: the decoder forward `model.biogpt(input_ids, attention_mask, position_ids)` with no KV cache (the
documentation's "AutoModel head", BioGptModel), on random token ids; with `--masks padded` each row ends in padding
(right padding, as BioGPT wants), a seeded 10-25% of the row by default. Both kernels run on the same model,
switched between calls with transformers' `set_attn_implementation` (checked by watching which torch functions a
forward calls), and their calls are interleaved so that load from other processes falls on both alike.

    python -m benchmarks.attention_table --model biogpt-base-random --batch-sizes 1 2 4 \
        --seq-lens 128 256 512 --dtype float32 --out results/attention-table-base
"""
from __future__ import annotations

import dataclasses
import os
import shlex
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import evaluation  # noqa: F401  first: a Ctrl-C while torch imports is then one line, not a traceback
import torch
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from benchmarks import cpu_profiler, interleaved, paired_speedup, parse_options, write_json
from evaluation import PRESETS, UsageError, footprint_bytes, option, resolve_device, run_main
from evaluation.answering import pad_batch
from evaluation.modeling import DTYPES, random_model
from evaluation.report.markdown import md_table
from evaluation.results import environment
from evaluation.telemetry import Clock, latency_stats
from tensor_rewriting.hot_path import TOLERANCE

IMPLEMENTATIONS = ("eager", "sdpa")
MB = 2**20


@dataclass(frozen=True)
class TableOptions:
    model: str = option("biogpt-base-random", "Random-weight preset (biogpt-base-random: microsoft/biogpt's "
                                              "architecture with BioGPT-Large's vocabulary).", choices=list(PRESETS))
    batch_sizes: list[int] = option(factory=lambda: [1, 2, 4], help="Rows of the table: batch sizes.", nargs="+",
                                    type=int)
    seq_lens: list[int] = option(factory=lambda: [128, 256, 512], nargs="+", type=int,
                                 help="Rows of the table: tokens per sequence (at most the preset's positions).")
    masks: list[str] = option(factory=lambda: ["none", "padded"], nargs="+", choices=["none", "padded"],
                              help="none: every position real (SDPA then takes its is_causal path, no mask "
                                   "tensor); padded: each row ends in padding, as a padded batch of prompts does.")
    pad_range: list[float] = option(factory=lambda: [0.10, 0.25], nargs=2, type=float, metavar=("LOW", "HIGH"),
                                    help="Padded rows: the padded share of each row is drawn from [LOW, HIGH].")
    layers: int | None = option(None, "Keep only the first N decoder layers (default: all). Every layer does the "
                                      "same work, so the eager/SDPA ratio holds at full depth while a grid costs "
                                      "N/depth of the time; latency and weights are then the cut model's.")
    dtype: str = option("float32", "Weights and activations.", choices=list(DTYPES))
    device: str = option("auto", "auto: CUDA when present.", choices=["auto", "cpu", "cuda"])
    threads: int | None = option(None, "torch intra-op threads; unset: torch's own default.")
    warmup: int = option(1, "Untimed calls per kernel and cell; the last one also gives the peak memory and the "
                            "outputs compared between kernels.")
    repeats: int = option(5, "Timed calls per kernel and cell.")
    seed: int = option(0, "Seed for the weights, the token ids and the padding.")
    out: str | None = option(None, "Write table.md and table.json into this directory.")

    def __post_init__(self):
        """Bad input ends the run before any model is built."""
        for flag, values in (("--batch-sizes", self.batch_sizes), ("--seq-lens", self.seq_lens)):
            if min(values) <= 0:
                raise UsageError(f"{flag} must be positive integers, got {min(values)}")
        preset = PRESETS[self.model]
        if max(self.seq_lens) > preset["max_position_embeddings"]:
            raise UsageError(f"--seq-lens {max(self.seq_lens)} is beyond {self.model}'s "
                             f"{preset['max_position_embeddings']} positions")
        low, high = self.pad_range
        if not 0 <= low <= high < 1:
            raise UsageError(f"--pad-range must satisfy 0 <= LOW <= HIGH < 1, got {low} {high}")
        if self.warmup < 1 or self.repeats < 1:
            raise UsageError(f"--warmup and --repeats must be at least 1, got {self.warmup} and {self.repeats}")
        if self.layers is not None and not 1 <= self.layers <= preset["num_hidden_layers"]:
            raise UsageError(f"--layers must be between 1 and {self.model}'s {preset['num_hidden_layers']}, "
                             f"got {self.layers}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be at least 1, got {self.threads}")


def make_batch(batch: int, seq_len: int, padded: bool, pad_range, config, generator, device):
    """Random non-special token ids as a [batch, seq_len] Batch; padded rows end in pad tokens."""
    ids = torch.randint(4, config.vocab_size, (batch, seq_len), generator=generator)
    real = [seq_len] * batch
    if padded:
        low, high = pad_range
        shares = low + (high - low) * torch.rand(batch, generator=generator)
        real = [max(1, seq_len - round(share * seq_len)) for share in shares.tolist()]
    return pad_batch([ids[row, :n].tolist() for row, n in enumerate(real)], range(batch), seq_len,
                     config.pad_token_id, False, device)


def decoder_forward(model, batch) -> torch.Tensor:
    return model.biogpt(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                        position_ids=batch.position_ids, use_cache=False).last_hidden_state


class CalledFunctions(TorchFunctionMode):
    """Names of the torch functions called inside the block."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.add(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def check_attention_path(model, implementation: str, batch) -> None:
    """set_attn_implementation is a config switch: prove the forward really takes that kernel."""
    model.set_attn_implementation(implementation)
    with CalledFunctions() as called:
        decoder_forward(model, batch)
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


def forward_with_peak(model, batch, device: torch.device) -> tuple[torch.Tensor, int]:
    """(output, bytes allocated at the forward's peak above what was live before it).

    CUDA: the caching allocator's max_memory_allocated. CPU has no such counter, so the forward runs under
    torch.profiler with profile_memory=True, which records every allocation and free of the CPU allocator,
    including those inside kernels; the peak is the highest running sum of them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        out = decoder_forward(model, batch)
        torch.cuda.synchronize(device)
        return out, torch.cuda.max_memory_allocated(device) - start
    with cpu_profiler(profile_memory=True) as prof:
        out = decoder_forward(model, batch)
    # the raw event stream: prof.events() nets each op's allocations, which hides peaks inside an op
    memory = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    if not memory:  # kineto's own error lines are silenced (cpu_profiler): a trace that failed shows here
        raise RuntimeError("torch.profiler recorded no CPU allocations during the forward")
    return out, allocation_peak(memory)


def spread(samples_ms: list[float]) -> dict:
    """latency_stats plus p10 (with few samples the quantiles interpolate between the extremes)."""
    q = statistics.quantiles(samples_ms, n=10, method="inclusive") if len(samples_ms) > 1 else samples_ms * 9
    return {**latency_stats(samples_ms), "p10": q[0]}


def agreement(model, outputs: dict, batch, dtype: str) -> dict:
    """SDPA against eager on the same inputs: last hidden state at real positions, and the full-vocabulary
    logits at each row's last real token. Tolerance as for compiled code (hot_path.TOLERANCE): the kernels
    reorder the same reductions."""
    real = batch.attention_mask.bool()
    eager, sdpa = (outputs[i].float()[real] for i in IMPLEMENTATIONS)
    rows = torch.arange(real.shape[0], device=real.device)
    logits = {i: model.output_projection(outputs[i][rows, batch.last_index]).float() for i in IMPLEMENTATIONS}
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


def measure_cell(model, batch, opts: TableOptions, device: torch.device, weights: int) -> dict:
    """Warm-up, memory and agreement per kernel, then the timed calls with the kernels interleaved."""
    outputs, peaks = {}, {}
    for implementation in IMPLEMENTATIONS:
        model.set_attn_implementation(implementation)
        for _ in range(opts.warmup - 1):
            decoder_forward(model, batch)
        outputs[implementation], peaks[implementation] = forward_with_peak(model, batch, device)
    check = agreement(model, outputs, batch, opts.dtype)
    del outputs
    samples = interleaved({i: (lambda: decoder_forward(model, batch)) for i in IMPLEMENTATIONS}, opts.repeats,
                          Clock(device), before=model.set_attn_implementation)
    row = {"batch_size": len(batch.indices), "seq_len": batch.input_ids.shape[1],
           "padded_pct": 100.0 * (1 - batch.real_tokens / batch.padded_tokens), "agreement": check}
    for implementation in IMPLEMENTATIONS:
        stats = spread(samples[implementation])
        row[implementation] = {"forward_ms": stats, "samples_ms": samples[implementation],
                               "per_token_ms": {k: stats[k] / batch.padded_tokens for k in ("p10", "p50", "p90")},
                               "forward_peak_mb": peaks[implementation] / MB,
                               "peak_mb": (weights + peaks[implementation]) / MB}
    eager, sdpa = row["eager"], row["sdpa"]
    # the documentation's definitions: eager / SDPA - 1, for time and for memory
    row["speedup_pct"] = 100.0 * (eager["forward_ms"]["p50"] / sdpa["forward_ms"]["p50"] - 1)
    row["paired_speedup"] = paired_speedup(samples["eager"], samples["sdpa"], "--repeats")
    row["mem_saved_pct"] = 100.0 * (eager["peak_mb"] / sdpa["peak_mb"] - 1)
    row["forward_mem_saved_pct"] = (100.0 * (eager["forward_peak_mb"] / sdpa["forward_peak_mb"] - 1)
                                    if sdpa["forward_peak_mb"] else None)
    return row


COLUMNS = ["batch_size", "seq_len", "mask (padded %)", "per-token latency eager (ms)", "per-token latency SDPA (ms)",
           "speedup (%)", "paired speedup (%)", "mem eager (MB)", "mem SDPA (MB)", "mem saved (%)",
           "fwd peak eager (MB)", "fwd peak SDPA (MB)", "max abs Δ hidden (tol)", "max abs Δ logits (tol)", "agree"]


def cells(r: dict) -> list:
    latency = lambda t: f"{t['p50']:.4f} ({t['p10']:.4f}–{t['p90']:.4f})"  # noqa: E731
    percent = lambda ratio: f"{100 * (ratio - 1):.1f}"  # noqa: E731
    a, e, s, paired = r["agreement"], r["eager"], r["sdpa"], r["paired_speedup"]
    interval = f" [{percent(paired['ci_low'])}, {percent(paired['ci_high'])}]" if paired["ci_low"] is not None else ""
    return [r["batch_size"], r["seq_len"], f"padded ({r['padded_pct']:.0f}%)" if r["mask"] == "padded" else "none",
            latency(e["per_token_ms"]), latency(s["per_token_ms"]), f"{r['speedup_pct']:.1f}",
            percent(paired["value"]) + interval, f"{e['peak_mb']:.0f}", f"{s['peak_mb']:.0f}",
            f"{r['mem_saved_pct']:.1f}", f"{e['forward_peak_mb']:.1f}", f"{s['forward_peak_mb']:.1f}",
            f"{a['max_abs_hidden_diff']:.1e} ({a['hidden_tolerance']:.0e})",
            f"{a['max_abs_logits_diff']:.1e} ({a['logits_tolerance']:.0e})", "yes" if a["passed"] else "NO"]


def markdown(rows: list[dict], meta: dict) -> str:
    env, opts = meta["environment"], meta["options"]
    cut = f" cut to {meta['layers']} of {meta['preset_layers']} layers" * (meta["layers"] < meta["preset_layers"])
    return "\n".join([
        f"# Attention kernels: eager vs SDPA, {opts['model']}{cut} ({opts['dtype']}, {env['device_type']})", "",
        f"- device: {env['device_name']}, {env['torch_threads']} torch threads, torch {env['torch']}, "
        f"transformers {env['transformers']}; {env['date']}; git commit {env['git_commit']}",
        f"- command: `{meta['command']}`",
        f"- timed: `model.biogpt(...)` decoder forward, no KV cache; {opts['warmup']} warm-up + {opts['repeats']} "
        "timed calls per kernel and cell, eager and SDPA interleaved",
        "- per-token latency: forward time / (batch x seq_len), median (p10–p90); speed-up % = eager / SDPA - 1 of "
        "the medians (the documentation's definition); paired: the median of that ratio over back-to-back call "
        "pairs, which cancels slow drifts in machine load, [95% interval] where the repeats allow one",
        f"- peak mem: weights ({meta['weights_mb']:.0f} MB) + the forward's allocation peak "
        f"({meta['memory_measure']}); mem saved % = eager / SDPA - 1; fwd peak: the forward's peak alone",
        "- max abs Δ: SDPA vs eager, last hidden state at real positions / full-vocabulary logits at each row's "
        "last real token, with the tolerance (atol + rtol x max |eager|)", "",
        md_table(COLUMNS, [cells(r) for r in rows])]) + "\n"


def main():
    opts = parse_options(TableOptions, __doc__.splitlines()[0])
    device = resolve_device(opts.device)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    depth = PRESETS[opts.model]["num_hidden_layers"]
    model = random_model(opts.model, opts.seed, DTYPES[opts.dtype], device, num_hidden_layers=opts.layers or depth)
    generator = torch.Generator().manual_seed(opts.seed)
    weights = footprint_bytes(model)
    rows = []
    with torch.inference_mode():
        probe = make_batch(2, 8, True, (0.25, 0.25), model.config, generator, device)
        for implementation in IMPLEMENTATIONS:
            check_attention_path(model, implementation, probe)
        grid = tqdm([(b, t, m) for b in opts.batch_sizes for t in opts.seq_lens for m in opts.masks],
                    desc=f"{opts.model} {opts.dtype}", unit="cell")
        for batch_size, seq_len, mask in grid:
            grid.set_postfix_str(f"{batch_size} x {seq_len}, mask {mask}")
            batch = make_batch(batch_size, seq_len, mask == "padded", opts.pad_range, model.config, generator, device)
            rows.append({"mask": mask, **measure_cell(model, batch, opts, device, weights)})

    meta = {"options": dataclasses.asdict(opts), "weights": "random", "layers": opts.layers or depth,
            "preset_layers": depth, "weights_mb": weights / MB,
            "timed": "model.biogpt(input_ids, attention_mask, position_ids), use_cache=False",
            "memory_measure": "torch.cuda.max_memory_allocated" if device.type == "cuda"
            else "torch.profiler profile_memory CPU allocator events",
            "command": shlex.join([os.path.basename(sys.executable)] + sys.argv), "environment": environment(device)}
    table = markdown(rows, meta)
    print(table)
    if opts.out:
        write_json(Path(opts.out) / "table.json", {"meta": meta, "rows": rows})
        (Path(opts.out) / "table.md").write_text(table)
        print(f"wrote {Path(opts.out) / 'table.md'} and table.json")
    failed = [f"{r['batch_size']} x {r['seq_len']} ({r['mask']})" for r in rows if not r["agreement"]["passed"]]
    if failed:
        print(f"SDPA and eager disagree beyond the tolerance in: {', '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_main(main)
