"""A --reference is read and checked whole before any weights load (issue 22 §2): a reference of another model, a
truncated results.json or per_question.csv, or one without a model identity is refused in one line, exit 2,
nothing written; every run records the identity of the model it ran."""
import json
import shutil

import pytest

from conftest import run_script
from evaluation import runner

pytestmark = pytest.mark.e2e  # every test compares with a reference run made by the script


@pytest.fixture(scope="module")
def reference(tokenizer_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    args = ["--model", "tiny-random", "--tokenizer-dir", tokenizer_dir, "--data-dir", data_dir, "--limit", "6",
            "--batch-size", "4", "--wandb", "disabled", "--output-dir", str(out), "--run-name", "ref",
            "--min-passes", "1"]
    assert run_script("baseline.baseline", args) == 0
    return out / "ref"


def refused(base_args, ref_dir, capsys, monkeypatch, *extra) -> str:
    """Runs against ref_dir; asserts exit 2 before any model weights were loaded, with nothing written."""
    loads = []
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: loads.append(a))
    assert run_script("baseline.baseline", [*base_args, "--reference", str(ref_dir), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert not loads and len(err) == 1 and err[0].startswith("error: --reference")
    return err[0]


def copy(ref, tmp_path):
    return shutil.copytree(ref, tmp_path / "copy")


def test_a_reference_of_another_model_is_refused(reference, base_args, capsys, monkeypatch, tmp_path):
    assert "another model (seed 0 vs 1)" in refused(base_args, reference, capsys, monkeypatch, "--seed", "1")
    other = copy(reference, tmp_path)
    results = json.loads((other / "results.json").read_text())
    results["model"]["identity"]["architecture"]["hidden_size"] = 1024
    (other / "results.json").write_text(json.dumps(results))
    assert "hidden_size 1024 vs 64" in refused(base_args, other, capsys, monkeypatch)


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "results.json").write_text((d / "results.json").read_text()[:500]), "unreadable, truncated"),
    (lambda d: (d / "per_question.csv").write_text((d / "per_question.csv").read_text()[:-60]), "incomplete"),
    (lambda d: (d / "per_question.csv").write_text(
        "\n".join(x.split(",", 3)[0] + "," + x.split(",", 3)[1] for x in
                  (d / "per_question.csv").read_text().splitlines()) + "\n"), "not a run's files"),
    (lambda d: (d / "results.json").write_text(json.dumps(
        {k: v for k, v in json.loads((d / "results.json").read_text()).items() if k != "model"})), "no model identity"),
])
def test_a_broken_reference_is_refused_before_loading(reference, base_args, capsys, monkeypatch, tmp_path, damage,
                                                      message):
    broken = copy(reference, tmp_path)
    damage(broken)
    assert message in refused(base_args, broken, capsys, monkeypatch)


def test_a_whole_reference_of_the_same_model_is_used(reference, base_args, tmp_path):
    assert run_script("baseline.baseline", [*base_args, "--reference", str(reference), "--run-name", "ok"]) == 0
    m = json.loads((tmp_path / "results" / "ok" / "results.json").read_text())["metrics"]
    assert m["fidelity"]["agreement"] == 100.0 and m["comparison"]["speedup"]["timing"] == "apart"
    assert m["comparison"]["significant_speedup"] is False
