"""Evaluate a model on PubMedQA: one cold pass for accuracy, then timed passes for speed and energy."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .answering import (ANSWER_PREFIX, answer_logits, answer_token_ids, encode_prompt, greedy_generate,
                        make_batches, parse_answer, prompt_form)
from .config import RunConfig
from .data import LABELS, Question, load_test_questions
from .metrics import UNPARSED, classification_metrics, fidelity
from .modeling import model_device, parameter_count, weight_bytes
from .results import check_output_dir, check_reference, environment, read_per_question, write_run
from .telemetry import Clock, Sampler, latency_stats
from .tracking import Tracker


@dataclass
class Pass:
    """One pass over every batch: outputs in question order and per-batch device times."""
    predictions: list[str]
    logits: list[list[float]] | None
    texts: list[str] | None
    batch_ms: list[float]
    prefill_ms: list[float] = field(default_factory=list)
    decode_ms: list[float] = field(default_factory=list)
    new_tokens: int = 0


def prepare(cfg: RunConfig) -> tuple[list[Question], Path]:
    """Check every input that can be checked before a model is loaded; (questions, run directory)."""
    run_dir = check_output_dir(cfg)
    check_reference(cfg.reference)
    return load_test_questions(cfg.data_dir, cfg.limit), run_dir


def score_pass(model, batches, n, answer_ids, clock, forward, progress=None) -> Pass:
    marks, outputs = [], []
    for b in batches:
        start = clock.mark()
        outputs.append(forward(model, b, answer_ids))
        marks.append((start, clock.mark()))
        if progress is not None:
            progress.update(len(b.indices))
    clock.sync()
    logits = [None] * n
    for b, out in zip(batches, outputs):
        for i, row in zip(b.indices, out.cpu().tolist()):
            logits[i] = row
    preds = [LABELS[max(range(3), key=row.__getitem__)] for row in logits]
    return Pass(preds, logits, None, [clock.ms(a, b) for a, b in marks])


def generate_pass(model, batches, n, tokenizer, max_new_tokens, clock, progress=None) -> Pass:
    marks, outputs = [], []
    for b in batches:
        tokens, m = greedy_generate(model, b, max_new_tokens, tokenizer.eos_token_id, clock)
        outputs.append(tokens)
        marks.append(m)
        if progress is not None:
            progress.update(len(b.indices))
    clock.sync()
    texts, new_tokens = [None] * n, 0
    for b, tokens in zip(batches, outputs):
        for i, row in zip(b.indices, tokens.cpu().tolist()):
            row = row[:row.index(tokenizer.eos_token_id)] if tokenizer.eos_token_id in row else row
            new_tokens += len(row)
            texts[i] = tokenizer.decode(row, skip_special_tokens=True)
    preds = [parse_answer(t) or UNPARSED for t in texts]
    return Pass(preds, None, texts, [clock.ms(a, c) for a, _, c in marks],
                [clock.ms(a, b) for a, b, _ in marks], [clock.ms(b, c) for _, b, c in marks], new_tokens)


def forward_flops(config, lengths: list[int], questions: int) -> float:
    """Nominal forward FLOPs: decoder matmuls, causal attention scores, LM head at one position per question."""
    h, ffn, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = sum(lengths)
    matmul = 2 * layers * (4 * h * h + 2 * h * ffn) * tokens
    attention = 2 * layers * h * sum(n * n for n in lengths)  # QK^T and AV, causal half of 2 * 2 * n^2 * h
    return matmul + attention + 2 * h * config.vocab_size * questions


def evaluate(model, tokenizer, questions: list[Question], cfg: RunConfig, forward=answer_logits,
             buckets: list[int] | None = None):
    """(metrics, per-question rows, per-batch history). `forward(model, batch, answer_ids)` -> [B, 3] logits;
    `buckets`: pad each batch's length up to one of these (for compiled code)."""
    device = model_device(model)
    cfg.prompt_form = prompt_form(tokenizer)
    generate = cfg.decode == "generate"
    max_len = model.config.max_position_embeddings - (cfg.max_new_tokens if generate else 0)
    encoded = [encode_prompt(tokenizer, q, "" if generate else ANSWER_PREFIX, max_len) for q in questions]
    ids = [e[0] for e in encoded]
    batches = make_batches(ids, cfg.batch_size, tokenizer.pad_token_id, left_pad=generate, device=device,
                           buckets=buckets)
    answer_ids = torch.tensor(answer_token_ids(tokenizer), device=device)
    clock, n = Clock(device), len(questions)

    def one_pass(progress=None) -> Pass:
        if generate:
            return generate_pass(model, batches, n, tokenizer, cfg.max_new_tokens, clock, progress)
        return score_pass(model, batches, n, answer_ids, clock, forward, progress)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tqdm(total=n, desc="cold pass", unit="q") as bar:
        t0 = time.perf_counter()
        cold = one_pass(bar)
        cold_s = time.perf_counter() - t0

    min_duration = cfg.min_duration if cfg.min_duration is not None else (10.0 if device.type == "cuda" else 0.0)
    passes, pass_s = [], []
    with Sampler(device) as sampler, tqdm(desc="timed passes", unit="pass") as bar:
        t_start = time.perf_counter()
        while len(passes) < cfg.min_passes or time.perf_counter() - t_start < min_duration:
            t0 = time.perf_counter()
            passes.append(one_pass())
            pass_s.append(time.perf_counter() - t0)
            bar.update(1)
    timed_s = sum(pass_s)

    real_tokens = sum(b.real_tokens for b in batches)
    question_ms = [ms / len(b.indices) for p in passes for b, ms in zip(batches, p.batch_ms) for _ in b.indices]
    flops = forward_flops(model.config, [len(x) for x in ids], n)
    metrics = classification_metrics([q.label for q in questions], cold.predictions)
    metrics.update({
        "cold_pass_s": cold_s,
        "pass_s": latency_stats([s * 1e3 for s in pass_s]) | {"unit": "ms"},
        "pass_wall_s_median": sorted(pass_s)[len(pass_s) // 2],
        "timed_passes": len(passes), "timed_s": timed_s,
        "latency_batch_ms": latency_stats([ms for p in passes for ms in p.batch_ms]),
        "latency_question_ms": latency_stats(question_ms),
        "throughput_qps": n * len(passes) / timed_s,
        "tokens_per_s": real_tokens * len(passes) / timed_s,
        "prompt_tokens": real_tokens, "padded_tokens": sum(b.padded_tokens for b in batches),
        "truncated_questions": sum(e[1] > 0 for e in encoded),
        "forward_tflop_per_pass": flops / 1e12,
        "achieved_tflops": flops * len(passes) / timed_s / 1e12,
        "timed_pass_agreement": 100.0 * sum(p.predictions == cold.predictions for p in passes) / len(passes),
        "telemetry": sampler.summary(n * len(passes)),
    })
    if generate:
        metrics["latency_prefill_ms"] = latency_stats([ms for p in passes for ms in p.prefill_ms])
        metrics["latency_decode_ms"] = latency_stats([ms for p in passes for ms in p.decode_ms])
        decode_s = sum(sum(p.decode_ms) for p in passes) / 1e3
        metrics["decode_tokens_per_s"] = sum(p.new_tokens for p in passes) / decode_s if decode_s else None
    if device.type == "cuda":
        metrics["torch_peak_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        metrics["torch_peak_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20
    else:
        metrics["torch_peak_allocated_mib"] = metrics["torch_peak_reserved_mib"] = None

    first = passes[0]
    per_question_ms = {i: ms / len(b.indices) for b, ms in zip(batches, first.batch_ms) for i in b.indices}
    rows = []
    for i, q in enumerate(questions):
        row = {"pmid": q.pmid, "gold": q.label, "prediction": cold.predictions[i]}
        logits = cold.logits[i] if cold.logits else [None] * 3
        row.update({f"logit_{label}": v for label, v in zip(LABELS, logits)})
        row.update(latency_ms=per_question_ms[i], tokens=len(ids[i]), truncated_tokens=encoded[i][1])
        if generate:
            row["generated"] = cold.texts[i]
        rows.append(row)
    history = [{"batch": k, "batch_size": len(b.indices), "seq_len": b.input_ids.shape[1],
                "latency_ms": ms, "real_tokens": b.real_tokens} for k, (b, ms) in enumerate(zip(batches, first.batch_ms))]
    return metrics, rows, history


def evaluate_and_log(cfg: RunConfig, model, tokenizer, questions, run_dir: Path, *, load_s: float,
                     setup_s: float | None = None, extra: dict | None = None, forward=answer_logits,
                     buckets: list[int] | None = None, curves: dict[str, list[dict]] | None = None) -> dict:
    """Evaluate, write results/<run>/ first, then log to wandb. `setup_s`: the technique's own
    apply/compile/tune time, reported apart from run time. `extra`: the technique's own metrics.
    `curves`: per-step records taken before evaluation (e.g. a fine-tuning loss), logged to wandb as history
    against their own step axis (`NAME/step`), e.g. {"finetune": [{"step", "train_loss", "learning_rate"}, ...]}."""
    device = model_device(model)
    weights_cuda = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
    metrics, rows, history = evaluate(model, tokenizer, questions, cfg, forward, buckets)
    metrics.update(load_s=load_s, setup_s=setup_s)
    if cfg.reference:
        current = {r["pmid"]: {"prediction": r["prediction"],
                               "logits": [r[f"logit_{x}"] for x in LABELS] if r["logit_yes"] is not None else None}
                   for r in rows}
        metrics["fidelity"] = fidelity(read_per_question(check_reference(cfg.reference)), current) | {
            "reference": cfg.reference}
    params, nbytes = parameter_count(model), weight_bytes(model)
    results = {
        "config": cfg.to_dict(),
        "environment": environment(device),
        "model": {"parameters": params, "weight_bytes": nbytes, "bytes_per_parameter": nbytes / params,
                  "weight_bytes_cuda_allocated": weights_cuda, "weights": cfg.weights},
        "metrics": metrics | (extra or {}),
    }
    write_run(run_dir, results, rows)
    tracker = Tracker(cfg, run_dir)
    for step, h in enumerate(history):
        tracker.log(h, step=step)
    for name, records in (curves or {}).items():
        tracker.curve(name, records)
    tracker.summary(results, rows)
    tracker.finish()
    print_summary(cfg, results, run_dir)
    return results


def print_summary(cfg: RunConfig, results: dict, run_dir: Path):
    m = results["metrics"]
    note = "  [weights: random — not a model accuracy]" if cfg.weights == "random" else ""
    lat = m["latency_question_ms"]
    print(f"{cfg.technique}/{cfg.variant} on {results['environment']['device_name']}: n={m['n']} "
          f"accuracy={m['accuracy']:.3f} macro_f1={m['macro_f1']:.3f}{note}")
    print(f"  pass {m['pass_wall_s_median']:.3f} s (cold {m['cold_pass_s']:.3f} s), {m['throughput_qps']:.1f} q/s, "
          f"latency/question p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms, load {m['load_s']:.1f} s")
    print(f"  results: {run_dir}/results.json")
