"""The one fine-tuning loop (pruning recovery, QAT): BioGPT's prompt/target format on the PubMedQA train/dev half."""
from __future__ import annotations

import contextlib
import random

import torch
from tqdm.auto import tqdm

from .answering import encode_prompt, target_text
from .data import Question
from .modeling import model_device

IGNORE = -100


def training_example(tokenizer, q: Question, max_len: int, prompt: list[int] = ()) -> tuple[list[int], list[int]]:
    """(input ids, labels): the loss is on the target sentence only, never on the prompt."""
    target = tokenizer.encode(target_text(q.label), add_special_tokens=False) + [tokenizer.eos_token_id]
    prompt, _ = encode_prompt(tokenizer, q, "", max_len - len(target), prompt)
    return prompt + target, [IGNORE] * len(prompt) + target


def collate(examples, pad_id: int, device) -> dict:
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (x, y) in enumerate(examples):
        ids[row, :len(x)], labels[row, :len(y)], mask[row, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids.to(device), "labels": labels.to(device), "attention_mask": mask.to(device)}


def finetune(model, tokenizer, train: list[Question], *, steps: int, test_pmids: set[str], batch_size: int = 4,
             lr: float = 1e-5, grad_accum: int = 1, warmup_fraction: float = 0.1, bf16_autocast: bool = False,
             seed: int = 0, log=None, prompt_ids: list[int] = ()) -> list[dict]:
    """Train `steps` optimizer steps on `train`; `log(dict, step)` gets loss and learning rate per step.
    `prompt_ids`: the run's learned soft-prompt ids (or none), so training sees the prompt the evaluation will use.

    `test_pmids` is checked against `train`: fine-tuning on a test question is refused.
    Masks that torch.nn.utils.prune keeps as forward pre-hooks stay fixed: only the unmasked weights learn.
    """
    from transformers import get_linear_schedule_with_warmup

    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    leaked = test_pmids & {q.pmid for q in train}
    if leaked:
        raise ValueError(f"{len(leaked)} test PMIDs in the fine-tuning data, e.g. {sorted(leaked)[0]}")
    device = model_device(model)
    max_len = model.config.max_position_embeddings
    examples = [training_example(tokenizer, q, max_len, prompt_ids) for q in train]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = get_linear_schedule_with_warmup(optimizer, int(warmup_fraction * steps), steps)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16_autocast
                else contextlib.nullcontext())
    rng = random.Random(seed)
    order, history = [], []
    model.train()
    for step in tqdm(range(steps), desc="fine-tuning", unit="step"):
        total = 0.0
        for _ in range(grad_accum):
            if len(order) < batch_size:
                order += rng.sample(range(len(examples)), len(examples))
            batch = collate([examples[i] for i in order[:batch_size]], tokenizer.pad_token_id, device)
            del order[:batch_size]
            with autocast:
                loss = model(**batch).loss / grad_accum
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        record = {"step": step, "train_loss": total, "learning_rate": schedule.get_last_lr()[0]}
        history.append(record)
        if log is not None:
            log(record, step)
    model.eval()
    return history
