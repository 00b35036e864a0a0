"""The variant registry (evaluation/matrix.py) is the one list: every sweep in sweeps/ is written from it and holds
exactly its variants, every combination a sweep produces is accepted by its script's own option parsing (dry run:
no model, no data), and a new registry entry reaches the sweeps, the matrix and the report without other edits."""
import itertools
from pathlib import Path

import pytest
import yaml

from evaluation import Options, UsageError, matrix, parse_config

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
MODULES = {matrix.PRECISION: "precision_reduction.precision_experiments", matrix.PRUNING: "pruning.pruning",
           matrix.PTQ: "quantization.quant_int8_dynamic_eval", matrix.QAT: "quantization.qat",
           matrix.COMPILE: "tensor_rewriting.tensor_experiments",
           matrix.ATTENTION: "tensor_rewriting.attention_experiments"}


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


def options_class(script: str):
    import importlib

    module = importlib.import_module(MODULES[script])
    return next(v for v in vars(module).values()
                if isinstance(v, type) and issubclass(v, Options) and v.__module__ == module.__name__)


def parse(script: str, argv: list[str]):
    """The script's own parsing of these flags: its RunConfig, or the UsageError / argparse exit it raises."""
    return parse_config("sweep-check", options_class(script), argv)


def test_sweeps_are_written_from_the_registry():
    assert {p.name for p in SWEEPS} == {f"{Path(s).stem}.yaml" for s in matrix.sweep_scripts()}
    for script in matrix.sweep_scripts():
        path = ROOT / "sweeps" / f"{Path(script).stem}.yaml"
        assert path.read_text() == matrix.sweep_yaml(script), f"{path.name} is stale: python -m evaluation.matrix --write-sweeps"


@pytest.mark.parametrize("sweep_file", SWEEPS, ids=[p.name for p in SWEEPS])
def test_sweep_combinations_are_accepted(sweep_file):
    from sweeps_run_variant import expand

    sweep = yaml.safe_load(sweep_file.read_text())
    assert sweep["method"] == "grid" and "sweeps/run_variant.py" in sweep["command"]
    combos = grid(sweep["parameters"])
    assert len(combos) == sum(v.script == sweep["program"] for v in matrix.VARIANTS)
    for params in combos:
        cfg = parse(sweep["program"], expand(agent_args(params)))
        assert cfg.model == "biogpt-large-random"


def test_every_registry_variant_parses_with_its_script():
    for v in matrix.VARIANTS[1:]:
        cfg = parse(v.script, list(v.flags))
        assert cfg.options.variant, v.name


def test_parse_catches_invalid_combinations():
    """The check can fail: a 2:4 pruning at 0.3 and a mode of the wrong backend are refused by the options."""
    with pytest.raises(UsageError, match="2:4 sparsity is 0.5"):
        parse(matrix.PRUNING, ["--strategy", "2:4", "--sparsity", "0.3"])
    with pytest.raises(UsageError, match="has no --mode ansor"):
        parse(matrix.COMPILE, ["--backend", "aot_eager", "--mode", "ansor"])


def test_a_new_registry_entry_reaches_sweeps_and_matrix(monkeypatch, tmp_path):
    extra = matrix.Variant("pruning-block-0.9", matrix.PRUNING, ("--strategy", "block", "--sparsity", "0.9"))
    monkeypatch.setattr(matrix, "VARIANTS", matrix.VARIANTS + [extra])
    assert '"--strategy block --sparsity 0.9"' in matrix.sweep_yaml(matrix.PRUNING)
    assert extra in matrix.select(["pruning"], None) and extra not in matrix.select(["quantization"], None)
    assert matrix.select(None, "block-0.9") == [matrix.VARIANTS[0], extra]  # the baseline always first
    written = matrix.write_sweeps(tmp_path)
    assert "--sparsity 0.9" in (tmp_path / "pruning.yaml").read_text() and len(written) == len(SWEEPS)


def test_known_broken_variants_are_skipped_with_their_reason():
    by_name = {v.name: v for v in matrix.VARIANTS}
    assert "compute capability" in by_name["precision-fp8"].skip_reason("cpu")
    assert by_name["precision-fp8"].skip_reason("cuda") and by_name["precision-fp8"].skip_reason("cuda-sm89") is None
    assert by_name["tensor-cudagraphs-default"].skip_reason("cuda") is None
    assert by_name["quantization-dynamic-int8-torchao"].skip_reason("cuda")
    assert by_name["baseline"].skip_reason("cpu") is None
    # bf16 on a CPU without bf16 matmul units: hours per pass, skipped; with them (or on a GPU) run
    for name in ("precision-bfloat16", "tensor-inductor-default-bfloat16"):
        assert "AVX-512 BF16 or AMX" in by_name[name].skip_reason("cpu")
        assert all(by_name[name].skip_reason(d) is None for d in ("cpu-bf16", "cuda", "cuda-sm89"))
    assert by_name["quantization-dynamic-int8-torchao"].skip_reason("cpu-bf16") is None
    assert by_name["tensor-cudagraphs-default"].skip_reason("cpu-bf16")


def test_device_kind_names_a_cpu_with_bf16_units(monkeypatch):
    import torch

    import evaluation.results as results

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    monkeypatch.setattr(results, "native_bf16_matmul", lambda: True)
    assert matrix.device_kind(["--device", "cpu"]) == "cpu-bf16"
    monkeypatch.setattr(results, "native_bf16_matmul", lambda: False)
    assert matrix.device_kind([]) == "cpu"


def test_expander_splits_combined_flags():
    from sweeps_run_variant import expand

    assert expand(["--flags=--strategy 2:4 --sparsity 0.5", "--model=tiny-random"]) == \
        ["--strategy", "2:4", "--sparsity", "0.5", "--model=tiny-random"]
