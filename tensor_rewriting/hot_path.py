"""The hot function every backend compiles, the harness's batches for it, and the eager check against it."""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from evaluation.answering import answer_logits

# Largest |logit difference| on the answer tokens we accept from compiled code, per dtype. Compilers reorder
# reductions and fuse ops, so results differ by rounding: ~1e-6 relative in float32, a few ulps of 2^-8 (bf16)
# or 2^-11 (fp16) per layer in half precision. The figure is absolute plus relative to the eager logits' scale.
TOLERANCE = {"float32": (1e-4, 1e-4), "float16": (5e-3, 1e-2), "bfloat16": (1e-2, 5e-2)}  # (atol, rtol)

# Static shapes: batch lengths rounded up to every 32 tokens up to 1,024 (PubMedQA prompts: mean 318, max 593),
# then coarser. The batches are eager's token-budget batches with this rounding counted as padding, so each is
# mostly its own [rows, length] shape: a compilation per batch, in exchange for padding under 10%.
DEFAULT_BUCKETS = list(range(32, 1025, 32)) + [1280, 1536, 2048]


class AnswerLogits(torch.nn.Module):
    """What gets compiled: [B, T] prompt tensors -> [B, 3] yes/no/maybe logits at each row's last real token.

    The same computation as evaluation.answering.answer_logits, as a module of tensors only (torch.export
    and torch.compile both want that), without the KV cache the decoder would otherwise build."""

    def __init__(self, model, answer_ids: torch.Tensor):
        super().__init__()
        self.model = model
        # the LM head's three answer rows only: the full head is a [B, H] x [H, 57,726] matmul for 3 used columns
        # (about 1% of a BioGPT forward), and indexing its output makes TVM warn at every build
        self.register_buffer("answer_head", model.output_projection.weight.detach()[answer_ids].clone(),
                             persistent=False)

    def forward(self, input_ids, attention_mask, position_ids, last_index):
        hidden = self.model.biogpt(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                   use_cache=False).last_hidden_state
        # gather, not advanced indexing: TVM imports indexing as take(mode="fast"), which warns at every build
        last = hidden.gather(1, last_index[:, None, None].expand(-1, 1, hidden.shape[-1])).squeeze(1)
        return torch.nn.functional.linear(last, self.answer_head).float()


class CompiledForward:
    """The harness's forward(model, batch, answer_ids) over a compiled fn of the 4 prompt tensors. Every batch is
    called as it is: a short last batch is its own shape (one compilation more at most), not padded with rows."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, model, batch, answer_ids):
        with torch.inference_mode():
            # clone: CUDA-graph backends (cudagraphs, reduce-overhead) overwrite their output buffer next call
            return self.fn(batch.input_ids, batch.attention_mask, batch.position_ids, batch.last_index).clone()


def warm_up(forward: CompiledForward, model, batches, answer_ids) -> list[tuple[int, int]]:
    """Run one batch of each distinct shape, so every compilation happens here (setup), not in timed passes.
    Returns the [rows, length] shapes the compiled code was called with."""
    shapes = {}
    for b in batches:
        shapes.setdefault(tuple(b.input_ids.shape), b)
    # a bar: untuned TVM on a CPU can spend many minutes on one large shape
    for b in tqdm(shapes.values(), desc="compile + warm-up", unit="shape"):
        forward(model, b, answer_ids)
    return sorted(shapes)


def eager_check(forward, model, batches, answer_ids, dtype: str) -> dict:
    """Compiled vs plain-PyTorch logits on the same padded batches: max |diff|, agreement, pass/fail."""
    got = forward_logits(forward, model, batches, answer_ids)
    want = forward_logits(answer_logits, model, batches, answer_ids)
    atol, rtol = TOLERANCE[dtype]
    return compare_logits(got, want, atol + rtol * want.abs().max().item())


def forward_logits(forward, model, batches, answer_ids) -> torch.Tensor:
    """[questions, 3] float32 logits of forward(model, batch, answer_ids) over these batches, on the CPU."""
    return torch.cat([forward(model, b, answer_ids).float().cpu()
                      for b in tqdm(batches, desc="eager check", unit="batch", leave=False)])


def compare_logits(got: torch.Tensor, want: torch.Tensor, tolerance: float) -> dict:
    """The eager check's record: max |diff| against `tolerance`, argmax agreement, pass/fail."""
    diff = (got - want).abs().max().item()
    finite = bool(torch.isfinite(got).all())
    return {"check_questions": len(want), "max_abs_logit_diff": diff if finite else math.inf,
            "eager_logit_scale": want.abs().max().item(), "tolerance": tolerance,
            "agreement_pct": 100.0 * (got.argmax(1) == want.argmax(1)).float().mean().item(),
            "passed": finite and diff <= tolerance}
