"""Every wandb sweep in sweeps/ only produces runs its script accepts: each grid combination is turned into the
command line the wandb agent would build, expanded by sweeps/run_variant.py, and parsed by the script's own
make_parser() and evaluation.config_from_args (dry run: no model, no data). A script that isn't in the tree yet
is skipped with the reason."""
import importlib.util
import itertools
import sys
from pathlib import Path

import pytest
import yaml

from evaluation import UsageError, config_from_args

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))
EXPECTED = {"precision.yaml", "pruning.yaml", "quantization.yaml", "tensor_rewriting.yaml"}

# Combinations the issues forbid that argparse `choices` can't see (a script checks them after parsing).
TENSOR_MODES = {"eager": {"default"}, "aot_eager": {"default"}, "cudagraphs": {"default"},
                "inductor": {"default", "reduce-overhead", "max-autotune"},
                "tvm": {"default", "ansor", "meta-schedule"}}


def invalid_combination(script: str, args) -> str | None:
    """Why these parsed args are a combination the script rejects (per issues 4 and 6), or None."""
    opts = vars(args)
    if script == "pruning.py":
        if not 0 <= opts["sparsity"] < 1:
            return f"sparsity {opts['sparsity']} outside [0, 1)"
        if opts["strategy"] == "2:4" and opts["sparsity"] != 0.5:
            return f"2:4 sparsity is 50% by definition, got --sparsity {opts['sparsity']}"
    if script == "tensor_experiments.py":
        valid = TENSOR_MODES.get(opts["backend"], set())
        if opts["mode"] not in valid:
            return f"--backend {opts['backend']} has no mode {opts['mode']!r} (valid: {sorted(valid)})"
    return None


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


def load_module(path: Path, name: str):
    sys.path[:0] = [str(path.parent), str(ROOT)]  # as when run as a script from the repo root
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        del sys.path[:2]


def check_sweep(sweep_file: Path) -> tuple[int, list[str]]:
    """(combinations checked, problems). A sweep whose script is missing is a broken sweep."""
    sweep = yaml.safe_load(sweep_file.read_text())
    command = [str(c) for c in sweep["command"]]
    assert sweep.get("method") == "grid", "grid sweeps only: every combination must be enumerable"
    assert "${program}" in command and "${args}" in command and "${interpreter}" in command, command
    uses_expander = "sweeps/run_variant.py" in command
    program = ROOT / sweep["program"]
    assert program.is_file(), f"{sweep_file.name}: {sweep['program']} does not exist"
    module = load_module(program, f"sweep_check_{program.stem}")
    assert hasattr(module, "make_parser"), f"{sweep['program']} defines no make_parser()"
    expand = load_module(ROOT / "sweeps" / "run_variant.py", "run_variant").expand
    problems, combos = [], grid(sweep["parameters"])
    for params in combos:
        argv = agent_args(params)
        argv = expand(argv) if uses_expander else argv
        try:
            args = module.make_parser().parse_args(argv)
            config_from_args(args, technique=program.parent.name, variant="sweep-check",
                             dtype=getattr(args, "dtype", None) or "float32")
        except SystemExit:
            problems.append(f"argparse rejects {argv}")
            continue
        except UsageError as e:
            problems.append(f"{argv}: {e}")
            continue
        why = invalid_combination(program.name, args)
        if why:
            problems.append(f"{argv}: {why}")
    return len(combos), problems


def test_every_script_has_a_sweep():
    assert EXPECTED <= {p.name for p in SWEEPS}


@pytest.mark.parametrize("sweep_file", SWEEPS, ids=[p.name for p in SWEEPS])
def test_sweep_combinations_are_accepted(sweep_file, capsys):
    n, problems = check_sweep(sweep_file)
    assert n > 0
    assert not problems, f"{sweep_file.name}: {len(problems)} of {n} combinations invalid:\n" + "\n".join(problems)


def test_expander_splits_combined_flags():
    expand = load_module(ROOT / "sweeps" / "run_variant.py", "run_variant").expand
    assert expand(["--flags=--strategy=2:4 --sparsity=0.5", "--model=tiny-random"]) == \
        ["--strategy=2:4", "--sparsity=0.5", "--model=tiny-random"]


def test_checker_catches_invalid_combinations(tmp_path, monkeypatch):
    """The check can fail: a plain strategy x sparsity grid (2:4 at 0.3) and a bad backend/mode are reported."""
    import argparse

    scripts = tmp_path / "fake"
    scripts.mkdir()
    (scripts / "pruning.py").write_text(
        "from evaluation import build_parser\n"
        "def make_parser():\n"
        "    p = build_parser('fake pruning')\n"
        "    p.add_argument('--strategy', choices=['unstructured', 'structured', 'block', '2:4'], help='s')\n"
        "    p.add_argument('--sparsity', type=float, default=0.5, help='x')\n"
        "    return p\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({
        "program": str(scripts / "pruning.py"), "method": "grid",
        "parameters": {"strategy": {"values": ["unstructured", "2:4", "3:4"]}, "sparsity": {"values": [0.3, 0.5]}},
        "command": ["${env}", "${interpreter}", "${program}", "${args}"]}))
    n, problems = check_sweep(bad)
    assert n == 6
    assert sum("2:4 sparsity" in p for p in problems) == 1      # 2:4 at 0.3
    assert sum("argparse rejects" in p for p in problems) == 2  # 3:4 is not a choice
    ns = argparse.Namespace(backend="aot_eager", mode="ansor")
    assert "valid" in invalid_combination("tensor_experiments.py", ns)
