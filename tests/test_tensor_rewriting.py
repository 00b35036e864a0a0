"""tensor_rewriting: compiled logits match eager, no recompilation across passes, TVM tuning cache, bad combos."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tensor_rewriting" / "tensor_experiments.py"


def run_script(base_args, *extra, script=SCRIPT):
    return subprocess.run([sys.executable, str(script), *base_args, *extra], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def results(base_args) -> dict:
    out = Path(base_args[base_args.index("--output-dir") + 1])
    (run,) = out.glob("*/results.json")
    return json.loads(run.read_text())


@pytest.mark.e2e
def test_unknown_combination_lists_valid_ones(base_args):
    proc = run_script(base_args, "--backend", "aot_eager", "--mode", "ansor")
    assert proc.returncode == 2, proc.stderr
    assert "--backend aot_eager has no --mode ansor" in proc.stderr
    assert "inductor: default|reduce-overhead|max-autotune" in proc.stderr and "tvm: default|ansor" in proc.stderr


@pytest.mark.e2e
def test_static_only_backends_refuse_dynamic_shapes(base_args):
    proc = run_script(base_args, "--backend", "tvm", "--shapes", "dynamic")
    assert proc.returncode == 2 and "tvm default compiles static shapes only" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize("backend", ["inductor", "tvm"])
@pytest.mark.e2e
def test_compiled_matches_eager_without_recompiling(base_args, backend):
    """Both run eager's token-budget batches, so padding stays under 10%. TVM (static shapes): each batch padded
    up to a bucket length, the rounding counted in the budget; one build per [rows, length] shape. Inductor
    (dynamic shapes by default): no bucket, one graph (a one-row batch may specialise once). Every compilation
    before the timed passes."""
    proc = run_script(base_args, "--backend", backend, "--min-passes", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Fast mode segfaults" not in proc.stderr  # TVM's take(mode="fast") warning: lookups are clipped instead
    r = results(base_args)
    m, t = r["metrics"], r["technique"]
    check = t["eager_check"]
    assert check["passed"] and check["max_abs_logit_diff"] <= check["tolerance"] and check["agreement_pct"] == 100
    assert m["padding_fraction"] < 0.10
    if backend == "tvm":
        assert t["shapes"] == "static" and all(length % 32 == 0 for _, length in t["compiled_shapes"])
        assert t["compile"]["compilations"] == len(t["compiled_shapes"])
    else:
        assert t["shapes"] == "dynamic" and 1 <= t["compile"]["compilations"] <= 2
    assert t["recompilations_in_passes"] == 0
    assert m["timed_passes"] == 2 and m["timed_pass_agreement"] == 100


def test_eager_check_catches_wrong_logits():
    from evaluation.answering import answer_logits, make_batches
    from evaluation.modeling import random_model
    from tensor_rewriting.hot_path import eager_check

    model = random_model("tiny-random", 0, torch.float32, torch.device("cpu"))
    batches = make_batches([[2, 5, 9, 11], [2, 7]], 2, 1, left_pad=False, device=torch.device("cpu"))
    answer_ids = torch.tensor([10, 11, 12])
    exact = eager_check(lambda m, b, a: answer_logits(m, b, a), model, batches, answer_ids, "float32")
    assert exact["passed"] and exact["max_abs_logit_diff"] == 0
    off = eager_check(lambda m, b, a: answer_logits(m, b, a) + 0.01, model, batches, answer_ids, "float32")
    assert not off["passed"] and off["max_abs_logit_diff"] == pytest.approx(0.01, rel=1e-3)


@pytest.mark.e2e
def test_tvm_tuning_database_written_then_reused(tmp_path):
    pytest.importorskip("tensor_rewriting.tvm_relax")
    from tensor_rewriting.tvm_relax import TVMCompiler, tuning

    if not tuning.json_database_works():
        pytest.skip(tuning.JSON_DATABASE_BROKEN)
    module = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU()).eval()
    x = torch.randn(4, 16)
    work_dir = tmp_path / "tuning"

    first = TVMCompiler(module, "ansor", torch.device("cpu"), trials=2, work_dir=str(work_dir), tune_ops=["matmul"])
    torch.testing.assert_close(first(x), module(x), rtol=1e-4, atol=1e-5)
    stats = first.stats()
    assert stats["compilations"] == 1 and stats["tasks"] >= 1 and stats["tasks_tuned"] == stats["tasks"]
    records = work_dir / "database_tuning_record.json"
    assert records.stat().st_size > 0

    second = TVMCompiler(module, "meta-schedule", torch.device("cpu"), trials=2, work_dir=str(work_dir),
                         tune_ops=["matmul"])
    torch.testing.assert_close(second(x), module(x), rtol=1e-4, atol=1e-5)
    assert second.stats()["tasks_tuned"] == 0
    assert second.stats()["tasks_from_database"] == stats["tasks"]


def test_tvm_refuses_out_of_range_ids():
    # Relax's take(mode="fast") does not bounds-check: such ids would give NaN logits instead of an error.
    pytest.importorskip("tensor_rewriting.tvm_relax")
    from evaluation import UsageError
    from evaluation.answering import make_batches
    from tensor_rewriting.tvm_relax import check_indices
    from transformers import BioGptConfig

    config = BioGptConfig(vocab_size=100, max_position_embeddings=64)
    ok = make_batches([[2, 5, 99]], 1, 1, left_pad=False, device=torch.device("cpu"))
    check_indices(ok, config)
    with pytest.raises(UsageError, match="vocabulary"):
        check_indices(make_batches([[2, 100]], 1, 1, False, torch.device("cpu")), config)
    with pytest.raises(UsageError, match="positions"):
        check_indices(make_batches([[2] * 65], 1, 1, False, torch.device("cpu")), config)
