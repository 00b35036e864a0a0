import json

import pytest
from conftest import make_synthetic_pubmedqa, needs_shared, SHARED_PUBMEDQA, SHARED_TOKENIZER

from evaluation import UsageError, load_finetuning_data, load_test_questions, load_tokenizer
from evaluation.answering import (ANSWER_PREFIX, answer_token_ids, encode_prompt, parse_answer,
                                  source_text)
from evaluation.data import load_splits


@needs_shared
def test_official_splits_500_500():
    test, train = load_splits(str(SHARED_PUBMEDQA))
    truth = json.loads((SHARED_PUBMEDQA / "test_ground_truth.json").read_text())
    assert len(test) == 500 and len(train) == 500
    assert {q.pmid for q in test} == set(truth)
    assert not {q.pmid for q in test} & {q.pmid for q in train}
    assert {q.pmid: q.label for q in test} == truth
    counts = {label: sum(q.label == label for q in test) for label in ("yes", "no", "maybe")}
    assert counts == {"yes": 276, "no": 169, "maybe": 55}


def test_limit_is_first_n_pmids_in_numeric_order(data_dir):
    full = load_test_questions(data_dir)
    assert [int(q.pmid) for q in full] == sorted(int(q.pmid) for q in full)
    assert load_test_questions(data_dir, 5) == full[:5]


def test_context_joined_and_whitespace_collapsed(tmp_path):
    root = make_synthetic_pubmedqa(tmp_path)
    pqal = json.loads((root / "ori_pqal.json").read_text())
    pmid = next(iter(json.loads((root / "test_ground_truth.json").read_text())))
    pqal[pmid]["CONTEXTS"] = ["First  part.\n", "\tSecond part."]
    (root / "ori_pqal.json").write_text(json.dumps(pqal))
    q = next(q for q in load_test_questions(str(root)) if q.pmid == pmid)
    assert q.context == "First part. Second part."
    assert source_text(q) == f"question: {q.question} context: First part. Second part. "


def test_train_half_never_holds_test_pmids(data_dir):
    test_ids = {q.pmid for q in load_test_questions(data_dir)}
    assert not test_ids & {q.pmid for q in load_finetuning_data(data_dir)[0]}
    train, test_pmids = load_finetuning_data(data_dir)
    assert test_pmids == test_ids and train == load_finetuning_data(data_dir)[0]


@pytest.mark.parametrize("breakage, message", [
    ("missing", "data file missing"),
    ("not-json", "not valid JSON"),
    ("bad-label", "label"),
    ("unknown-pmid", "not in ori_pqal.json"),
])
def test_bad_data_files_name_the_file(tmp_path, breakage, message):
    root = make_synthetic_pubmedqa(tmp_path)
    truth_path = root / "test_ground_truth.json"
    if breakage == "missing":
        truth_path.unlink()
    elif breakage == "not-json":
        truth_path.write_text("{oops")
    elif breakage == "bad-label":
        pqal = json.loads((root / "ori_pqal.json").read_text())
        next(iter(pqal.values()))["final_decision"] = "perhaps"
        (root / "ori_pqal.json").write_text(json.dumps(pqal))
    else:
        truth = json.loads(truth_path.read_text()) | {"1": "yes"}
        truth_path.write_text(json.dumps(truth))
    with pytest.raises(UsageError, match=message):
        load_test_questions(str(root))


@needs_shared
def test_fairseq_tokenizer_matches_biogpt_large_ids():
    tok = load_tokenizer("tiny-random", str(SHARED_TOKENIZER))
    assert len(tok) == 57717
    assert tok("the answer to the question given the context is yes.")["input_ids"] == \
        [2, 8, 9367, 20, 8, 2509, 785, 8, 1328, 34, 22134, 4]
    assert answer_token_ids(tok) == [22134, 126, 28139]
    # learned1..learned9 are not tokens of this vocabulary: the learned prompt lives in the model's rows after it
    assert all(tok.convert_tokens_to_ids(f"learned{k}") == tok.unk_token_id for k in range(1, 10))


def test_prompt_ends_with_answer_prefix_and_truncates_source_only(tokenizer_dir, data_dir):
    tok = load_tokenizer("tiny-random", tokenizer_dir)
    q = load_test_questions(data_dir, 1)[0]
    suffix = tok.encode(ANSWER_PREFIX, add_special_tokens=False)
    ids, cut = encode_prompt(tok, q, ANSWER_PREFIX, 10_000)
    assert cut == 0 and ids[0] == 2 and ids[-len(suffix):] == suffix
    short, cut = encode_prompt(tok, q, ANSWER_PREFIX, len(suffix) + 6)
    assert len(short) == len(suffix) + 6 and cut == len(ids) - len(short) and short[-len(suffix):] == suffix


def test_tokenizer_bad_input(tmp_path):
    with pytest.raises(UsageError, match="tokenizer file missing"):
        load_tokenizer("tiny-random", str(tmp_path))
    with pytest.raises(UsageError, match="--tokenizer-dir"):
        load_tokenizer("tiny-random", None)


@pytest.mark.parametrize("text, label", [
    ("the answer to the question given the context is yes.", "yes"),
    ("The answer to the question given the context is maybe .", "maybe"),
    ("blah the answer to the question given the context is no", "no"),
    ("the answer to the question given the context is nope.", None),
    ("yes", None),
])
def test_biogpt_answer_pattern(text, label):
    assert parse_answer(text) == label
