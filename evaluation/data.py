"""PubMedQA labelled set (PQA-L): the official 500 test PMIDs and the 500-PMID train/dev half."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from .config import UsageError

LABELS = ("yes", "no", "maybe")
HUB_DATASET = "bigbio/pubmed_qa"
HUB_CONFIG = "pubmed_qa_labeled_fold0_bigbio_qa"  # its test split is the official 500


@dataclass(frozen=True)
class Question:
    pmid: str
    question: str
    context: str  # CONTEXTS joined with spaces, whitespace collapsed
    label: str


def collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise UsageError(f"data file missing: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"data file malformed: {path}: not valid JSON ({e})")
    if not isinstance(data, dict) or not data:
        raise UsageError(f"data file malformed: {path}: expected a non-empty JSON object keyed by PMID")
    return data


def _question(pmid: str, row: dict, path: Path) -> Question:
    try:
        question, contexts, label = row["QUESTION"], row["CONTEXTS"], row["final_decision"]
    except (KeyError, TypeError) as e:
        raise UsageError(f"data file malformed: {path}: PMID {pmid} lacks {e}")
    if label not in LABELS or not isinstance(contexts, list):
        raise UsageError(f"data file malformed: {path}: PMID {pmid} has label {label!r} or non-list CONTEXTS")
    if not isinstance(question, str) or not all(isinstance(c, str) for c in contexts):
        kinds = sorted({type(x).__name__ for x in [question, *contexts] if not isinstance(x, str)})
        raise UsageError(f"data file malformed: {path}: PMID {pmid} has a non-string QUESTION or CONTEXTS item "
                         f"({', '.join(kinds)})")
    q = Question(pmid, collapse(question), collapse(" ".join(contexts)), label)
    empty = [name for name, text in (("QUESTION", q.question), ("CONTEXTS", q.context)) if not text]
    if empty:  # a prompt without them would still be scored, silently, as if it asked something
        raise UsageError(f"data file malformed: {path}: PMID {pmid} has an empty {' and '.join(empty)}")
    return q


def load_local(data_dir: str) -> tuple[list[Question], list[Question]]:
    """(test, train) from the official files ori_pqal.json + test_ground_truth.json."""
    root = Path(data_dir)
    if not root.is_dir():
        raise UsageError(f"data directory not found: {root}")
    pqal_path, truth_path = root / "ori_pqal.json", root / "test_ground_truth.json"
    pqal, truth = _read_json(pqal_path), _read_json(truth_path)
    missing = sorted(set(truth) - set(pqal))
    if missing:
        raise UsageError(f"data file malformed: {truth_path}: {len(missing)} test PMIDs not in {pqal_path.name}, "
                         f"e.g. {missing[0]}")
    questions = {pmid: _question(pmid, row, pqal_path) for pmid, row in pqal.items()}
    for pmid, label in truth.items():
        if questions[pmid].label != label:
            raise UsageError(f"data file malformed: {truth_path}: PMID {pmid} label {label!r} "
                             f"disagrees with {pqal_path.name}")
    test = [questions[p] for p in truth]
    train = [q for p, q in questions.items() if p not in truth]
    return _sorted(test), _sorted(train)


def load_hub() -> tuple[list[Question], list[Question]]:
    """(test, train) from the Hugging Face Hub; needs network access."""
    import datasets

    try:
        ds = datasets.load_dataset(HUB_DATASET, HUB_CONFIG, revision="refs/convert/parquet")
    except Exception as e:  # offline, hub down, renamed dataset
        raise UsageError(f"could not load {HUB_DATASET}/{HUB_CONFIG} from the Hugging Face Hub "
                         f"({type(e).__name__}); pass --data-dir with ori_pqal.json + test_ground_truth.json")

    def rows(split):
        return [Question(str(r["id"]), collapse(r["question"]), collapse(r["context"]), r["answer"][0])
                for r in ds[split]]
    train = rows("train") + rows("validation")
    return _sorted(rows("test")), _sorted(train)


def _sorted(questions: list[Question]) -> list[Question]:
    return sorted(questions, key=lambda q: int(q.pmid))


def load_splits(data_dir: str | None) -> tuple[list[Question], list[Question]]:
    test, train = load_local(data_dir) if data_dir else load_hub()
    overlap = {q.pmid for q in test} & {q.pmid for q in train}
    assert not overlap, f"test PMIDs leaked into the train half: {sorted(overlap)[:5]}"
    return test, train


def load_test_questions(data_dir: str | None, limit: int | None = None) -> list[Question]:
    """The official test split in ascending PMID order; `limit` keeps the first N of that order."""
    test, _ = load_splits(data_dir)
    return test[:limit] if limit else test


def load_finetuning_data(data_dir: str | None) -> tuple[list[Question], set[str]]:
    """(train/dev half, all 500 test PMIDs) from one read: what the fine-tuning loop takes and checks against."""
    test, train = load_splits(data_dir)
    return train, {q.pmid for q in test}
