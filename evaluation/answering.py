"""The fast path: BioGPT's PubMedQA prompt, length-sorted batches, score and greedy-generate decoding."""
from __future__ import annotations

import functools
import inspect
import re
from dataclasses import dataclass

import torch

from .data import LABELS, Question
from .config import UsageError

ANSWER_PREFIX = "the answer to the question given the context is"
ANSWER_PATTERN = re.compile(r"the answer to the question given the context is (yes|no|maybe)\b")


def source_text(q: Question) -> str:
    return f"question: {q.question} context: {q.context} "


def target_text(label: str) -> str:
    return f"{ANSWER_PREFIX} {label}."


LEARNED_PROMPT_LENGTH = 9  # BioGPT's --learned-prompt 9: fairseq appended learned1..learned9 after the vocabulary


def prompt_ids(tokenizer, config, form: str = "auto") -> list[int]:
    """The learned soft-prompt ids that go between source and target, or [] for the plain form.

    BioGPT-Large-PubMedQA was fine-tuned with 9 learned prompt tokens that fairseq appended to the dictionary, so
    its embedding holds 9 rows more than the Hugging Face tokenizer has ids: those rows, V..V+8, are the prompt.
    `config`: the model's (its embedding rows); form: auto (learned when the model has exactly those rows), learned
    (required), plain (never)."""
    vocab, rows = len(tokenizer), config.vocab_size
    learned = list(range(vocab, vocab + LEARNED_PROMPT_LENGTH)) if rows == vocab + LEARNED_PROMPT_LENGTH else []
    if form == "learned" and not learned:
        raise UsageError(f"--prompt learned needs a model with the tokenizer's {vocab} ids plus "
                         f"{LEARNED_PROMPT_LENGTH} learned-prompt rows; this one has {rows} embedding rows")
    return [] if form == "plain" else learned


def prompt_form(ids: list[int]) -> str:
    return f"learned-prompt-{len(ids)}" if ids else "plain"


def answer_token_ids(tokenizer) -> list[int]:
    """The ids of yes, no and maybe. Anything but three distinct single known tokens is refused: two answers on
    one id (a truncated vocabulary maps both to <unk>) would get equal logits in every row."""
    ids = [tokenizer.encode(label, add_special_tokens=False) for label in LABELS]
    firsts = [i[0] if len(i) == 1 else None for i in ids]
    if None in firsts or len(set(firsts)) != len(LABELS) or tokenizer.unk_token_id in firsts:
        became = ", ".join(f"{label} -> {' '.join(tokenizer.convert_ids_to_tokens(i))} {i}"
                           for label, i in zip(LABELS, ids))
        raise UsageError(f"the tokenizer does not hold yes, no and maybe as three distinct single tokens ({became}): "
                         "a truncated or wrong vocabulary (--tokenizer-dir)?")
    return firsts


def encode_prompt(tokenizer, q: Question, suffix: str, max_len: int, prompt: list[int] = ()) -> tuple[list[int], int]:
    """[bos] source [prompt] suffix, the source cut from its end when over max_len; (ids, tokens cut).
    `prompt`: the learned soft-prompt ids (prompt_ids), BioGPT's order: source, prompt, target."""
    bos = tokenizer.build_inputs_with_special_tokens([])  # BioGPT: [</s>], as fairseq starts each line
    source = tokenizer.encode(source_text(q), add_special_tokens=False)
    tail = list(prompt) + (tokenizer.encode(suffix, add_special_tokens=False) if suffix else [])
    cut = max(0, len(bos) + len(source) + len(tail) - max_len)
    return bos + source[:len(source) - cut] + tail, cut


@dataclass
class Batch:
    indices: list[int]           # positions in the question list
    input_ids: torch.Tensor      # [B, T] on the model's device
    attention_mask: torch.Tensor
    last_index: torch.Tensor     # [B] position of the last real token
    position_ids: torch.Tensor   # [B, T]
    real_tokens: int
    padded_tokens: int


def bucket_width(width: int, buckets: list[int] | None) -> int:
    """The smallest bucket length that holds `width` (compiled code is then reused across batches)."""
    if not buckets:
        return width
    fitting = [b for b in sorted(buckets) if b >= width]
    if not fitting:
        raise ValueError(f"a batch of {width} tokens exceeds the largest bucket length {max(buckets)}")
    return fitting[0]


MAX_PADDING = 0.10  # the share of a token-budget batch's computed tokens that may be padding


def token_budget_groups(lengths: list[int], batch_size: int, width_of=lambda n: n) -> list[list[int]]:
    """Indices in batches of similar length, longest first (so the memory peak shows at once). A batch holds at
    most batch_size x the mean length in padded tokens (so memory stays that of batch_size average prompts, and
    short prompts share a batch with more of their kind), and is closed before padding passes MAX_PADDING of it.
    width_of: the length a batch is padded to for its longest prompt (a bucket length, for static shapes)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    budget = batch_size * sum(lengths) / max(len(lengths), 1)
    groups, current, real = [], [], 0
    for i in order:
        width = width_of(lengths[current[0]] if current else lengths[i])
        padded = (len(current) + 1) * width
        if current and (padded > budget or padded - real - lengths[i] > MAX_PADDING * padded):
            groups.append(current)
            current, real = [], 0
        current.append(i)
        real += lengths[i]
    return groups + ([current] if current else [])


def make_batches(encoded: list[list[int]], batch_size: int, pad_id: int, left_pad: bool,
                 device: torch.device, buckets: list[int] | None = None) -> list[Batch]:
    """Length-sorted batches moved to the device up front.

    Token-budget batches (token_budget_groups), so padding stays under MAX_PADDING at any --limit. With `buckets`
    (static-shape compiled code, one compilation per [rows, length]): each batch padded up to a bucket length,
    that padding counted in the budget (a one-prompt batch can't be split: its rounding is all it pads)."""
    lengths = [len(x) for x in encoded]
    groups = token_budget_groups(lengths, batch_size, lambda n: bucket_width(n, buckets))
    return [pad_batch([encoded[i] for i in idx], idx, bucket_width(max(lengths[i] for i in idx), buckets), pad_id,
                      left_pad, device) for idx in groups]


def pad_batch(rows: list[list[int]], indices: list[int], width: int, pad_id: int, left_pad: bool,
              device: torch.device) -> Batch:
    """These prompts as one [len(rows), width] batch, padded on the right (score) or the left (generate)."""
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, tokens in enumerate(rows):
        cols = slice(width - len(tokens), width) if left_pad else slice(0, len(tokens))
        ids[row, cols] = torch.tensor(tokens)
        mask[row, cols] = 1
    real = mask.sum(1)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    last = torch.full_like(real, width - 1) if left_pad else real - 1
    return Batch(list(indices), ids.to(device), mask.to(device), last.to(device), positions.to(device),
                 int(real.sum()), len(rows) * width)


@dataclass
class Prompts:
    """The questions encoded and batched for one decode mode: what every pass over them runs."""
    ids: list[list[int]]
    truncated: list[int]         # tokens cut from each source to fit the model's positions
    batches: list[Batch]
    answer_ids: torch.Tensor     # yes, no, maybe


def encode_all(tokenizer, config, questions: list[Question], decode: str, batch_size: int, prompt: list[int],
               device: torch.device, max_new_tokens: int = 0, buckets: list[int] | None = None) -> Prompts:
    """Every question as BioGPT's prompt (score: ending in the answer prefix; generate: before it, with room for
    max_new_tokens), in token-budget batches on `device` (padded up to `buckets` for static-shape code)."""
    generate = decode == "generate"
    max_len = config.max_position_embeddings - (max_new_tokens if generate else 0)
    encoded = [encode_prompt(tokenizer, q, "" if generate else ANSWER_PREFIX, max_len, prompt) for q in questions]
    ids = [e[0] for e in encoded]
    batches = make_batches(ids, batch_size, tokenizer.pad_token_id, left_pad=generate, device=device, buckets=buckets)
    return Prompts(ids, [e[1] for e in encoded], batches, torch.tensor(answer_token_ids(tokenizer), device=device))


def full_attention_mask(model, mask: torch.Tensor, q_length: int) -> torch.Tensor:
    """The [B, 1, q, kv] boolean mask SDPA attends with, from a [B, kv] padding mask: each of the last q positions
    sees every real token up to itself. Built on the device without reading any value back.

    Why not pass the 2D mask: from one, transformers' SDPA path (masking_utils._ignore_causal_mask_sdpa) asks
    `fast_all(padding_mask)` in a Python `if` on every forward, to drop the mask when nothing is padded: a
    device-to-host read per batch and per decode step. A 4D mask it takes as given. Eager attention wants an
    additive float mask and flash a 2D one, so other implementations get the 2D mask as before."""
    if model.config._attn_implementation != "sdpa":
        return mask
    kv = mask.shape[1]
    causal = torch.ones(q_length, kv, dtype=torch.bool, device=mask.device).tril(kv - q_length)
    return causal[None, None] & mask.bool()[:, None, None, :]


@torch.inference_mode()
def answer_logits(model, batch: Batch, answer_ids: torch.Tensor) -> torch.Tensor:
    """Next-token logits over yes/no/maybe at each sequence's last real position; LM head only there."""
    mask = full_attention_mask(model, batch.attention_mask, batch.input_ids.shape[1])
    # use_cache=False: one forward needs no KV cache, and BioGPT would otherwise build one (a copy of every
    # layer's keys and values) per batch by default
    hidden = model.biogpt(input_ids=batch.input_ids, attention_mask=mask, position_ids=batch.position_ids,
                          use_cache=False).last_hidden_state
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), batch.last_index]
    return model.output_projection(last)[:, answer_ids].float()


@functools.cache
def cache_arg() -> str:
    """transformers renamed past_key_values to cache (the old name warns, and goes in 5.40): what this one takes.
    Asked at the first decode, not at import (importing the model class imports torchao, whose start-up lines
    evaluation filters only once it is imported itself)."""
    from transformers import BioGptForCausalLM

    return "cache" if "cache" in inspect.signature(BioGptForCausalLM.forward).parameters else "past_key_values"


def prefill(model, input_ids, attention_mask, position_ids, cache=None):
    """One forward over `input_ids` after `cache`; `attention_mask`: [B, cached + new] padding mask."""
    mask = full_attention_mask(model, attention_mask, input_ids.shape[1])
    out = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, use_cache=True,
                logits_to_keep=1, **{cache_arg(): cache})
    return out.logits[:, -1].argmax(-1), getattr(out, cache_arg())


@torch.inference_mode()
def greedy_generate(model, batch: Batch, max_new_tokens: int, eos_id: int, clock) -> tuple[torch.Tensor, tuple]:
    """Greedy decoding with a KV cache over a left-padded batch; returns (new tokens [B, n], clock marks)."""
    t0 = clock.mark()
    token, cache = prefill(model, batch.input_ids, batch.attention_mask, batch.position_ids)
    t1 = clock.mark()
    tokens, mask, pos = [token], batch.attention_mask, batch.position_ids[:, -1:]
    done = token == eos_id
    for _ in range(max_new_tokens - 1):
        if bool(done.all()):  # one host sync per step, as any stopping rule needs
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = pos + 1
        token, cache = prefill(model, token[:, None], mask, pos, cache)
        token = torch.where(done, torch.full_like(token, eos_id), token)
        tokens.append(token)
        done = done | (token == eos_id)
    t2 = clock.mark()
    return torch.stack(tokens, 1), (t0, t1, t2)


def parse_answer(text: str) -> str | None:
    """BioGPT's answer pattern; None when the text holds no yes/no/maybe answer."""
    m = ANSWER_PATTERN.search(text.strip().lower())
    return m.group(1) if m else None
