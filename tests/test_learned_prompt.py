"""The real checkpoint's shape: 57,726 embedding rows = 57,717 tokenizer ids + BioGPT's 9 learned prompt tokens.
The 9 ids go between source and target (fairseq's order) in score and generate mode, batched or not; a model
directory of that shape runs with --model DIR and records the learned prompt; --prompt plain leaves them out."""
import json

import pytest
import torch

from conftest import run_script
from pathlib import Path

from evaluation import RunConfig, UsageError, evaluate, load_model, load_test_questions, load_tokenizer
from evaluation.answering import ANSWER_PREFIX, encode_prompt, make_batches, prompt_ids
from evaluation.resolve import resolve

LEARNED = list(range(57717, 57726))


@pytest.fixture(scope="module")
def tiny(tokenizer_dir):
    cfg = RunConfig(model="tiny-random", tokenizer_dir=tokenizer_dir)
    return load_model(cfg, torch.device("cpu")), load_tokenizer(cfg.model, tokenizer_dir)


def test_the_nine_rows_after_the_vocabulary_are_the_prompt(tiny):
    model, tok = tiny
    assert model.config.vocab_size == 57726 and len(tok) == 57717
    assert prompt_ids(tok, model.config) == prompt_ids(tok, model.config, "learned") == LEARNED
    assert prompt_ids(tok, model.config, "plain") == []


@pytest.mark.parametrize("suffix", [ANSWER_PREFIX, ""])  # score mode ends in the answer prefix, generate in none
def test_prompt_sits_between_source_and_target(tiny, data_dir, suffix):
    model, tok = tiny
    q = load_test_questions(data_dir, 1)[0]
    plain, _ = encode_prompt(tok, q, suffix, 2048)
    learned, _ = encode_prompt(tok, q, suffix, 2048, LEARNED)
    tail = tok.encode(suffix, add_special_tokens=False) if suffix else []
    source_end = len(plain) - len(tail)
    assert learned == plain[:source_end] + LEARNED + tail


@pytest.mark.parametrize("left_pad", [False, True])  # score pads right, generate left
def test_prompt_ids_survive_batching_in_place(tiny, data_dir, left_pad):
    model, tok = tiny
    ids = [encode_prompt(tok, q, ANSWER_PREFIX, 2048, LEARNED)[0] for q in load_test_questions(data_dir, 5)]
    for b in make_batches(ids, 4, tok.pad_token_id, left_pad=left_pad, device=torch.device("cpu")):
        for row, i in enumerate(b.indices):
            real = b.input_ids[row][b.attention_mask[row].bool()].tolist()
            assert real == ids[i]


def evaluated(model, **config) -> list[dict]:
    """The rows of evaluate(): predictions and token counts come from the cold pass, so no timed passes."""
    cfg = RunConfig(model="tiny-random", max_new_tokens=3, wandb="disabled", min_passes=0, **config)
    return evaluate(model, cfg, resolve(cfg, torch.device("cpu"), Path("unused")))[1]


@pytest.mark.parametrize("decode", ["score", "generate"])
def test_learned_and_batched_equals_unbatched(tiny, tokenizer_dir, data_dir, decode):
    model, _ = tiny
    common = dict(tokenizer_dir=tokenizer_dir, data_dir=data_dir, limit=5, decode=decode)
    rows = {bs: evaluated(model, batch_size=bs, **common) for bs in (1, 4)}
    assert [r["prediction"] for r in rows[1]] == [r["prediction"] for r in rows[4]]
    plain = evaluated(model, batch_size=4, prompt="plain", **common)
    assert [r["tokens"] for r in plain] == [r["tokens"] - 9 for r in rows[4]]  # the 9 prompt tokens, nothing else


@pytest.mark.e2e
def test_a_model_directory_of_the_real_shape_runs_and_records_the_prompt(tiny, base_args, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path / "ckpt")
    tok.save_pretrained(tmp_path / "ckpt")
    argv = [a for a in base_args]
    argv[argv.index("tiny-random")] = str(tmp_path / "ckpt")
    assert run_script("baseline.baseline", [*argv, "--run-name", "dir"]) == 0
    run = json.loads((tmp_path / "results" / "dir" / "results.json").read_text())["run"]
    assert run["prompt_form"] == "learned-prompt-9" and run["prompt_ids"] == LEARNED
    assert run_script("baseline.baseline", [*argv, "--run-name", "plain", "--prompt", "plain"]) == 0
    assert json.loads((tmp_path / "results" / "plain" / "results.json").read_text())["run"]["prompt_form"] == "plain"


def test_learned_without_the_rows_and_a_larger_tokenizer_are_refused(tiny, data_dir, tmp_path):
    from transformers import BioGptConfig, BioGptForCausalLM

    _, tok = tiny
    small = BioGptForCausalLM(BioGptConfig(vocab_size=len(tok), hidden_size=8, num_hidden_layers=1,
                                           num_attention_heads=1, intermediate_size=8))
    assert prompt_ids(tok, small.config) == []
    with pytest.raises(UsageError, match="--prompt learned needs"):
        prompt_ids(tok, small.config, "learned")
    small = BioGptForCausalLM(BioGptConfig(vocab_size=len(tok) - 1, hidden_size=8, num_hidden_layers=1,
                                           num_attention_heads=1, intermediate_size=8))
    small.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(UsageError, match="tokenizer has 57717 ids but the model only 57716 embedding rows"):
        resolve(RunConfig(model=str(tmp_path), data_dir=data_dir), torch.device("cpu"), tmp_path / "run")
