"""Evaluate a model on PubMedQA: one cold pass for accuracy, then timed passes for speed and energy."""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .answering import Prompts, answer_logits, greedy_generate, parse_answer
from .config import RunConfig
from .data import LABELS, Question
from .metrics import UNPARSED, classification_metrics
from .telemetry import Clock, Sampler, latency_stats


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


def passes_needed(min_passes: int, min_duration: float, done: int, elapsed_s: float, last_pass_s: float) -> int:
    """How many timed passes the phase will take, as far as is known now: --min-passes, or more when
    --min-duration needs them at the last pass's pace (re-estimated after every pass, so the ETA stays honest)."""
    left_s = max(0.0, min_duration - elapsed_s)
    by_time = done + (math.ceil(left_s / last_pass_s) if left_s and last_pass_s > 0 else 0)
    return max(min_passes, by_time, done)


def cold_pass(one_pass, n: int):
    with tqdm(total=n, desc="cold pass", unit="q") as bar:
        t0 = time.perf_counter()
        cold = one_pass(bar)
        return cold, time.perf_counter() - t0


def run_passes(one_pass, n: int, min_passes: int, min_duration: float, device: torch.device, reference=None):
    """The cold pass (accuracy, predictions), then timed passes until min_passes and min_duration (seconds of
    timed passes) are met, with the sampler on. (cold pass, its seconds, timed passes, their seconds, the
    reference's pass seconds, telemetry). min_passes 0: no timed phase; the sampler watches the cold pass instead.

    reference (--paired, evaluation.paired): each timed pass is one round with a pass of the reference, in the
    order A B, B A, A B, ... so that neither always runs first; the sampler is paused during the reference's."""
    if min_passes == 0:
        with Sampler(device) as sampler:
            cold, cold_s = cold_pass(one_pass, n)
        return cold, cold_s, [], [], [], sampler.summary(n)
    cold, cold_s = cold_pass(one_pass, n)
    passes, pass_s, ref_s = [], [], []

    def reference_pass():
        with sampler.paused():
            ref_s.append(reference.timed_pass())

    total = passes_needed(min_passes, min_duration, 0, 0.0, cold_s)
    desc = "timed passes" + (", each paired with a reference pass" if reference else "")
    with Sampler(device) as sampler, tqdm(total=total, desc=desc, unit="pass") as bar:
        while len(passes) < min_passes or sum(pass_s) < min_duration:
            first = len(passes) % 2 == 0
            if reference and first:
                reference_pass()
            t0 = time.perf_counter()
            passes.append(one_pass())
            pass_s.append(time.perf_counter() - t0)
            if reference and not first:
                reference_pass()
            bar.total = passes_needed(min_passes, min_duration, len(passes), sum(pass_s), pass_s[-1])
            bar.update(1)
    return cold, cold_s, passes, pass_s, ref_s, sampler.summary(n * len(passes))


def timing_metrics(model, prompts: Prompts, n: int, cold: Pass, cold_s: float, passes: list[Pass],
                   pass_s: list[float]) -> dict:
    """Latency, throughput, token and FLOP figures of the timed passes; of the cold pass when there were none
    (--min-passes 0), and `timing_source` says which."""
    batches = prompts.batches
    source, source_s = (passes, pass_s) if passes else ([cold], [cold_s])
    timed_s = sum(source_s)
    real_tokens = sum(b.real_tokens for b in batches)
    question_ms = [ms / len(b.indices) for p in source for b, ms in zip(batches, p.batch_ms) for _ in b.indices]
    flops = forward_flops(model.config, [len(x) for x in prompts.ids], n)
    metrics = {
        "timing_source": "timed_passes" if passes else "cold_pass",
        "cold_pass_s": cold_s,
        "pass_ms": latency_stats([s * 1e3 for s in pass_s]),
        "pass_wall_s_median": statistics.median(pass_s) if pass_s else None,
        "pass_wall_s_samples": pass_s,
        "timed_passes": len(passes), "timed_s": sum(pass_s),
        "latency_batch_ms": latency_stats([ms for p in source for ms in p.batch_ms]),
        "latency_question_ms": latency_stats(question_ms),
        "throughput_qps": n * len(source) / timed_s,
        "tokens_per_s": real_tokens * len(source) / timed_s,
        "prompt_tokens": real_tokens, "padded_tokens": sum(b.padded_tokens for b in batches),
        "padding_fraction": 1 - real_tokens / sum(b.padded_tokens for b in batches),
        "padded_tokens_per_s": sum(b.padded_tokens for b in batches) * len(passes) / timed_s,
        "truncated_questions": sum(t > 0 for t in prompts.truncated),
        "forward_tflop_per_pass": flops / 1e12,
        "achieved_tflops": flops * len(source) / timed_s / 1e12,
    }
    if cold.texts is not None:
        metrics["latency_prefill_ms"] = latency_stats([ms for p in source for ms in p.prefill_ms])
        metrics["latency_decode_ms"] = latency_stats([ms for p in source for ms in p.decode_ms])
        decode_s = sum(sum(p.decode_ms) for p in source) / 1e3
        metrics["decode_tokens_per_s"] = sum(p.new_tokens for p in source) / decode_s if decode_s else None
    return metrics


def question_rows(questions: list[Question], prompts: Prompts, cold: Pass, first: Pass) -> list[dict]:
    """One row per question, in question order: gold, prediction, answer logits, latency, tokens."""
    per_question_ms = {i: ms / len(b.indices) for b, ms in zip(prompts.batches, first.batch_ms) for i in b.indices}
    rows = []
    for i, q in enumerate(questions):
        row = {"pmid": q.pmid, "gold": q.label, "prediction": cold.predictions[i]}
        logits = cold.logits[i] if cold.logits else [None] * 3
        row.update({f"logit_{label}": v for label, v in zip(LABELS, logits)})
        row.update(latency_ms=per_question_ms[i], tokens=len(prompts.ids[i]), truncated_tokens=prompts.truncated[i])
        if cold.texts is not None:
            row["generated"] = cold.texts[i]
        rows.append(row)
    return rows


def pass_runner(model, cfg: RunConfig, run, forward=answer_logits):
    """one_pass(progress=None) -> Pass: one pass of `model` over the run's batches in its decode mode."""
    prompts, n, clock = run.prompts, len(run.questions), Clock(run.device)

    def one_pass(progress=None) -> Pass:
        if cfg.decode == "generate":
            return generate_pass(model, prompts.batches, n, run.tokenizer, cfg.max_new_tokens, clock, progress)
        return score_pass(model, prompts.batches, n, prompts.answer_ids, clock, forward, progress)
    return one_pass


def evaluate(model, cfg: RunConfig, run, forward=answer_logits, reference=None):
    """(metrics, per-question rows, per-batch history of the first timed pass) of `model` over the run's prompts
    (run: the runner's Resolved record). `forward(model, batch, answer_ids)` -> [B, 3] logits; `reference`: a
    paired reference (evaluation.paired) whose passes alternate with these, its pass times in the metrics."""
    prompts, device, questions = run.prompts, run.device, run.questions
    n = len(questions)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    cold, cold_s, passes, pass_s, ref_s, telemetry = run_passes(pass_runner(model, cfg, run, forward), n,
                                                                cfg.min_passes, run.min_duration_s, device, reference)
    metrics = classification_metrics([q.label for q in questions], cold.predictions)
    metrics.update(timing_metrics(model, prompts, n, cold, cold_s, passes, pass_s))
    metrics["timed_pass_agreement"] = (100.0 * sum(p.predictions == cold.predictions for p in passes) / len(passes)
                                       if passes else None)
    metrics["telemetry"] = telemetry
    if reference is not None:
        metrics["reference_pass_wall_s_samples"] = ref_s
    cuda = device.type == "cuda"
    metrics["torch_peak_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    metrics["torch_peak_reserved_mib"] = torch.cuda.max_memory_reserved(device) / 2**20 if cuda else None
    first = passes[0] if passes else cold
    history = [{"index": k, "size": len(b.indices), "seq_len": b.input_ids.shape[1], "latency_ms": ms,
                "real_tokens": b.real_tokens} for k, (b, ms) in enumerate(zip(prompts.batches, first.batch_ms))]
    return metrics, question_rows(questions, prompts, cold, first), history
