"""The variant registry (each technique folder's variants.py, collected by evaluation.matrix.variants) is the one
list: every sweep in sweeps/ is written from it and holds exactly its variants, every combination a sweep produces is
accepted by its script's own option parsing (dry run: no model, no data), a new registry entry reaches the sweeps,
the matrix and the report without other edits, and a variant is skipped for exactly what its script refuses."""
import itertools
from pathlib import Path

import pytest
import yaml

from evaluation import UsageError, matrix, parse_config

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
BY_NAME = {v.name: v for v in matrix.variants()}


def agent_args(params: dict) -> list[str]:
    """The flags the wandb agent passes for ${args}: --name=value (wandb's own builder when importable)."""
    try:
        from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

        return create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})["args"]
    except ImportError:
        return [f"--{k}={v}" for k, v in params.items()]


def grid(parameters: dict) -> list[dict]:
    names, choices = [], []
    for name, spec in parameters.items():
        assert "value" in spec or "values" in spec, f"{name}: only value/values parameters can be enumerated"
        names.append(name)
        choices.append([spec["value"]] if "value" in spec else spec["values"])
    return [dict(zip(names, combo)) for combo in itertools.product(*choices)]


def options_class(module: str):
    return next(v.options for v in matrix.variants() if v.module == module)


def parse(module: str, argv: list[str]):
    """The script's own parsing of these flags: its RunConfig, or the UsageError / argparse exit it raises."""
    return parse_config("sweep-check", options_class(module), argv)


def test_sweeps_are_written_from_the_registry():
    assert {p.name for p in SWEEPS} == {f"{m.rsplit('.', 1)[-1]}.yaml" for m in matrix.sweep_modules()}
    for module in matrix.sweep_modules():
        path = ROOT / "sweeps" / f"{module.rsplit('.', 1)[-1]}.yaml"
        assert path.read_text() == matrix.sweep_yaml(module), f"{path.name} is stale: python -m evaluation.matrix --write-sweeps"


def test_each_technique_declares_its_own_variants_and_is_named_by_its_folder():
    """Every variant comes from its technique's own folder (FOLDER/variants.py, the options' module there), the
    baseline first; every script names its technique by its folder, as results.json records it."""
    import ast

    variants = matrix.variants()
    assert variants[0].name == "baseline" and {v.technique for v in variants} == {
        "baseline", "precision_reduction", "pruning", "quantization", "tensor_rewriting"}
    for module in {v.module for v in variants}:
        tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "main"]
        assert [c.args[0].value for c in calls] == [module.split(".")[0]], module
    # the matrix's code (docstrings aside) names no script, no technique and no device rule of its own
    code = ast.parse((ROOT / "evaluation" / "matrix.py").read_text())
    docs = {id(n.body[0].value) for n in ast.walk(code) if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))
            and n.body and isinstance(n.body[0], ast.Expr)}
    words = " ".join(str(n.value) for n in ast.walk(code) if isinstance(n, ast.Constant) and id(n) not in docs)
    words += " " + " ".join(n.attr for n in ast.walk(code) if isinstance(n, ast.Attribute))
    assert not [t for t in ({v.technique for v in variants} - {"baseline"}) | {v.module for v in variants}
                | {"cuda", "get_device_capability", "native_bf16_matmul"} if t in words.split()]


@pytest.mark.parametrize("sweep_file", SWEEPS, ids=[p.name for p in SWEEPS])
def test_sweep_combinations_are_accepted(sweep_file):
    from sweeps_run_variant import expand

    sweep = yaml.safe_load(sweep_file.read_text())
    assert sweep["method"] == "grid" and "sweeps/run_variant.py" in sweep["command"]
    combos = grid(sweep["parameters"])
    assert len(combos) == sum(v.module == sweep["program"] for v in matrix.variants())
    for params in combos:
        cfg = parse(sweep["program"], expand(agent_args(params)))
        assert cfg.model == "biogpt-large-random"


def test_every_registry_variant_parses_with_its_script():
    for v in matrix.variants()[1:]:
        cfg = parse(v.module, list(v.flags))
        assert cfg.options.variant, v.name


def test_parse_catches_invalid_combinations():
    """The check can fail: a 2:4 pruning at 0.3 and a mode of the wrong backend are refused by the options."""
    with pytest.raises(UsageError, match="2:4 sparsity is 0.5"):
        parse("pruning.prune", ["--strategy", "2:4", "--sparsity", "0.3"])
    with pytest.raises(UsageError, match="has no --mode ansor"):
        parse("tensor_rewriting.tensor_experiments", ["--backend", "aot_eager", "--mode", "ansor"])


def test_a_new_registry_entry_reaches_sweeps_and_matrix(monkeypatch, tmp_path):
    pruning = BY_NAME["pruning-block-0.3"]
    extra = matrix.Variant("pruning-block-0.9", pruning.options, ("--strategy", "block", "--sparsity", "0.9"))
    registry = (*matrix.variants(), extra)
    monkeypatch.setattr(matrix, "variants", lambda: registry)
    assert '"--strategy block --sparsity 0.9"' in matrix.sweep_yaml("pruning.prune")
    assert extra in matrix.select(["pruning"], None) and extra not in matrix.select(["quantization"], None)
    assert matrix.select(None, "block-0.9") == [BY_NAME["baseline"], extra]  # the baseline always first
    written = matrix.write_sweeps(tmp_path)
    assert "--sparsity 0.9" in (tmp_path / "prune.yaml").read_text() and len(written) == len(SWEEPS)


@pytest.fixture
def cuda_device(monkeypatch):
    """What the scripts' own checks see on a CUDA machine of this compute capability (faked on this CPU)."""
    import torch

    from evaluation import roofline

    def fake(capability):
        monkeypatch.setattr(roofline, "matmul_peak_tflops", lambda device, dtype: {"tflops": 500.0})
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: f"GPU sm{capability[0]}{capability[1]}")
    return fake


def skip(name: str, *common: str) -> str | None:
    return matrix.skip_reason(BY_NAME[name], ["--model", "tiny-random", *common])


def test_skip_reasons_are_what_the_scripts_refuse(cuda_device):
    """The matrix runs a variant's own checks (Options.check, the attention check) instead of a list of its own:
    its skip reason is the script's one-line refusal."""
    assert "compute capability" in skip("precision-fp8", "--device", "cpu")
    assert "CUDA graphs" in skip("tensor-cudagraphs-default", "--device", "cpu")
    assert "CUDA kernel" in skip("attention-sdpa-cudnn", "--device", "cpu")
    assert skip("baseline", "--device", "cpu") is None and skip("quantization-dynamic-int8-torchao") is None
    cuda_device((8, 0))
    assert "8.0" in skip("precision-fp8", "--device", "cuda")
    assert skip("tensor-cudagraphs-default", "--device", "cuda") is None
    assert "--cpu-backend applies to CPU runs" in skip("quantization-dynamic-int8-torchao", "--device", "cuda")
    cuda_device((9, 0))
    assert skip("precision-fp8", "--device", "cuda") is None


def test_a_variant_is_skipped_for_its_work_not_for_the_cpu(monkeypatch):
    """bf16 at 0.8 GFLOP/s (a CPU without bf16 matmul units): a tiny model's pass takes a second and runs, BioGPT-
    Large's would take hours and is skipped with the estimate; at a real bf16 peak both run."""
    from evaluation import roofline

    slow = {"float32": 150e-3, "bfloat16": 0.8e-3}
    monkeypatch.setattr(roofline, "matmul_peak_tflops", lambda device, dtype: {"tflops": slow[str(dtype)[6:]]})
    assert skip("precision-bfloat16", "--limit", "20") is None
    why = matrix.skip_reason(BY_NAME["precision-bfloat16"], ["--model", "biogpt-large-random", "--limit", "20"])
    assert "h per pass" in why and "bfloat16 matmul peak of 0.8 GFLOP/s" in why
    assert matrix.skip_reason(BY_NAME["baseline"], ["--model", "biogpt-large-random", "--limit", "20"]) is None
    monkeypatch.setattr(roofline, "matmul_peak_tflops", lambda device, dtype: {"tflops": 0.3})
    assert matrix.skip_reason(BY_NAME["precision-bfloat16"], ["--model", "biogpt-large-random", "--limit", "20"]) is None


def test_expander_splits_combined_flags():
    from sweeps_run_variant import expand

    assert expand(["--flags=--strategy 2:4 --sparsity 0.5", "--model=tiny-random"]) == \
        ["--strategy", "2:4", "--sparsity", "0.5", "--model=tiny-random"]
