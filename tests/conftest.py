"""Shared fixtures: the ../shared data when present, else a small synthetic PubMedQA set made here."""
import importlib.util
import json
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# sweeps/run_variant.py is a script, not a package module: loaded once by path for the sweep tests
_spec = importlib.util.spec_from_file_location("sweeps_run_variant", ROOT / "sweeps" / "run_variant.py")
sys.modules["sweeps_run_variant"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sys.modules["sweeps_run_variant"])
SHARED = ROOT.parent / "shared" / "data"
SHARED_PUBMEDQA = SHARED / "pubmedqa"
SHARED_TOKENIZER = SHARED / "biogpt-large"
needs_shared = pytest.mark.skipif(not (SHARED_PUBMEDQA / "ori_pqal.json").is_file()
                                  or not (SHARED_TOKENIZER / "dict.txt").is_file(),
                                  reason="../shared/data (PubMedQA + BioGPT-Large vocabulary) is not beside the repo")


@pytest.fixture(scope="session")
def shared_data_dir():
    if not (SHARED_PUBMEDQA / "ori_pqal.json").is_file():
        pytest.skip("../shared/data/pubmedqa is not beside the repo")
    return str(SHARED_PUBMEDQA)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """The real BioGPT-Large fairseq vocabulary when present, else a small synthetic one."""
    if (SHARED_TOKENIZER / "dict.txt").is_file():
        return str(SHARED_TOKENIZER)
    return str(make_synthetic_vocab(tmp_path_factory.mktemp("vocab")))


WORDS = ("the answer to question given context is yes no maybe . , patients study results were of and in with "
         "a for was treatment risk group analysis clinical data : ? effect").split()


def make_synthetic_vocab(root: Path, size: int = 57717) -> Path:
    """A dict.txt/bpecodes pair of whole-word tokens padded to BioGPT-Large's 57,717 ids."""
    tokens = WORDS + [f"tok{i}" for i in range(size - 4 - len(WORDS))]
    merges = []
    for word in WORDS:  # merge each word's characters left to right into one word-final token
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        for part in parts[1:]:
            merges.append(f"{parts[0]} {part} 1")
            parts[0] += part
    (root / "dict.txt").write_text("".join(f"{t} 1\n" for t in tokens))
    (root / "bpecodes").write_text("\n".join(dict.fromkeys(merges)) + "\n")
    return root


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The shared PubMedQA set when present, else a synthetic one in the official format (40 PMIDs)."""
    if (SHARED_PUBMEDQA / "ori_pqal.json").is_file():
        return str(SHARED_PUBMEDQA)
    return str(make_synthetic_pubmedqa(tmp_path_factory.mktemp("pubmedqa")))


def make_synthetic_pubmedqa(root: Path, n: int = 40, seed: int = 0) -> Path:
    rng = random.Random(seed)
    labels = ["yes", "no", "maybe"]
    pqal, truth = {}, {}
    for i in range(n):
        pmid = str(10_000_000 + i * 7)
        label = labels[i % 3]
        pqal[pmid] = {"QUESTION": f"Is treatment {i} effective ?",
                      "CONTEXTS": [" ".join(rng.choices(WORDS, k=rng.randint(10, 60))) for _ in range(2)],
                      "LABELS": ["BACKGROUND", "RESULTS"], "MESHES": [], "final_decision": label,
                      "LONG_ANSWER": "yes ."}
        if i % 2 == 0:
            truth[pmid] = label
    (root / "ori_pqal.json").write_text(json.dumps(pqal))
    (root / "test_ground_truth.json").write_text(json.dumps(truth))
    return root


@pytest.fixture
def base_args(tokenizer_dir, data_dir, tmp_path):
    """Common CLI args for a fast, offline tiny-random run writing into a temporary results dir."""
    return ["--model", "tiny-random", "--tokenizer-dir", tokenizer_dir, "--data-dir", data_dir,
            "--limit", "6", "--batch-size", "4", "--wandb", "disabled", "--output-dir", str(tmp_path / "results")]


def run_script(module: str, argv: list[str]) -> int:
    """`python <script> ARGV` in this process (no interpreter start-up per run): the script's exit code.
    `module` is the script as a module path, e.g. "pruning.pruning"."""
    import runpy
    import sys
    from unittest import mock

    with mock.patch.object(sys, "argv", [module.replace(".", "/") + ".py", *argv]):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=False)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 1
    return 0
