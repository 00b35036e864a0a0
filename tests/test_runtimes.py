"""ONNX Runtime and OpenVINO backends: eager's work on eager's batches, the artifact cache, partial conversions and
devices refused, quantized modes held to their yardstick."""
import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import run_script
from evaluation import UsageError
from evaluation.answering import make_batches
from evaluation.modeling import random_model

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

MODULE = "tensor_rewriting.tensor_experiments"


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def logits(run_dir: Path) -> dict[str, list[float]]:
    with open(run_dir / "per_question.csv") as f:
        return {r["pmid"]: [float(r[f"logit_{x}"]) for x in ("yes", "no", "maybe")] for r in csv.DictReader(f)}


def run(base_args, name: str, *flags: str, cache: Path | None = None) -> Path:
    cache_flags = ["--runtime-cache-dir", str(cache)] if cache else []
    assert run_script(MODULE, [*base_args, "--run-name", name, "--min-passes", "1", *cache_flags, *flags]) == 0
    return Path(base_args[base_args.index("--output-dir") + 1]) / name


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.e2e
def test_fp32_runtime_does_eagers_work_on_eagers_batches(backend, base_args, tmp_path):
    """Same batches (tokens, padding), same logits as eager PyTorch on every question within float32 rounding;
    the footprint is the runtime's own artifact and the torch weights are gone before timing."""
    assert run_script("baseline.baseline", [*base_args, "--run-name", "eager", "--min-passes", "1"]) == 0
    eager = Path(base_args[base_args.index("--output-dir") + 1]) / "eager"
    run_dir = run(base_args, backend, "--backend", backend, "--reference", str(eager), cache=tmp_path / "cache")
    r, ref = results(run_dir), results(eager)
    for key in ("prompt_tokens", "padded_tokens", "padding_fraction"):
        assert r["metrics"][key] == ref["metrics"][key], key
    mine, theirs = logits(run_dir), logits(eager)
    assert mine.keys() == theirs.keys()
    assert max(abs(a - b) for q in mine for a, b in zip(mine[q], theirs[q])) < 1e-4
    assert r["metrics"]["fidelity"]["agreement"] == 100.0
    t = r["technique"]
    assert t["eager_check"]["passed"] and t["eager_check"]["tolerance_basis"].startswith("float32")
    weights = sum(p.stat().st_size for p in Path(t["artifact"]["artifact_dir"]).iterdir() if p.name != "meta.json")
    assert r["model"]["footprint_bytes"] == weights and r["run"]["device"] == "cpu"
    assert t["runtime"]["runtime"] == backend and r["environment"]["packages"][backend]
    if backend == "onnxruntime":
        assert t["runtime"]["providers"] == ["CPUExecutionProvider"]
        assert t["artifact"]["transformers_optimizer_fusions"]["SkipLayerNormalization"] > 0
        assert any(op.startswith("SkipLayerNormalization@") for op in t["runtime"]["ops_run"])
    else:
        assert t["runtime"]["config"]["INFERENCE_PRECISION_HINT"] == "f32"
        assert any("ScaledDotProductAttention" in f for f in t["runtime"]["fusions"])


@pytest.mark.e2e
def test_artifact_built_once_then_reused_and_int8_from_it(base_args, tmp_path):
    cache = tmp_path / "cache"
    first = results(run(base_args, "fp32", "--backend", "onnxruntime", cache=cache))["technique"]["artifact"]
    int8 = results(run(base_args, "int8", "--backend", "onnxruntime", "--mode", "int8-dynamic", cache=cache))
    again = results(run(base_args, "again", "--backend", "onnxruntime", cache=cache))["technique"]["artifact"]
    assert not first["reused"] and again["reused"] and again["artifact_dir"] == first["artifact_dir"]
    q = int8["technique"]["artifact"]
    assert not q["reused"] and q["source_artifact"] == first["artifact_dir"] != q["artifact_dir"]
    assert q["quantized_fraction"] == 1.0 and q["quantized_matmuls"] == 2 * 6  # q, k, v, out, fc1, fc2 x 2 layers
    assert q["bytes_on_disk"] < first["bytes_on_disk"]
    check = int8["technique"]["eager_check"]
    assert check["passed"] and check["tolerance"] == pytest.approx(2 * check["yardstick_max_abs_logit_diff"])
    assert any(op.startswith(("DynamicQuantizeMatMul@", "MatMulIntegerToFloat@"))
               for op in int8["technique"]["runtime"]["ops_run"])
    assert sorted(p.name for p in cache.iterdir()) == sorted(Path(a["artifact_dir"]).name for a in (first, q))


@pytest.mark.e2e
def test_openvino_int8_weights_with_dynamic_activations(base_args, tmp_path):
    t = results(run(base_args, "ov", "--backend", "openvino", "--mode", "int8-weights-dynamic",
                    cache=tmp_path / "cache"))["technique"]
    assert t["artifact"]["quantized_fraction"] == 1.0 and t["artifact"]["float_matmuls"] == {"answer head": 1}
    assert t["runtime"]["config"]["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == "32"
    assert t["eager_check"]["passed"] and "torch.ao dynamic int8" in t["eager_check"]["tolerance_basis"]


def test_cache_key_follows_model_options_and_versions(monkeypatch):
    from types import SimpleNamespace

    from tensor_rewriting import runtime_cache

    config = SimpleNamespace(to_dict=lambda: {"hidden_size": 64})
    identity = lambda seed: runtime_cache.model_identity(  # noqa: E731
        {"name": "tiny-random", "weights": "random", "seed": seed}, config, [1, 2, 3])
    key = lambda **parts: runtime_cache.artifact_key({"kind": "fp32", "identity": identity(0)} | parts)  # noqa: E731
    assert key() == key() != key(kind="int8-dynamic")
    assert key() != key(identity=identity(1))
    assert key(libraries=runtime_cache.library_versions()) != key(libraries={"onnxruntime": "0.0"})


def tiny_program():
    from tensor_rewriting.hot_path import AnswerLogits
    from tensor_rewriting.onnx_export import export_program

    model = random_model("tiny-random", 0, torch.float32, torch.device("cpu"))
    return model, export_program(AnswerLogits(model, torch.tensor([10, 11, 12])), model)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.e2e
def test_partial_conversion_refused(backend, tmp_path, monkeypatch):
    """A quantizer that leaves one decoder MatMul float: refused with a count, not reported as int8."""
    model, program = tiny_program()
    fp32, out = tmp_path / "fp32", tmp_path / "int8"
    fp32.mkdir(), out.mkdir()
    if backend == "onnxruntime":
        import onnxruntime.quantization as quantization

        from tensor_rewriting import ort_backend as runtime
        real = quantization.quantize_dynamic
        monkeypatch.setattr(quantization, "quantize_dynamic",
                            lambda *a, nodes_to_quantize, **k: real(*a, nodes_to_quantize=nodes_to_quantize[1:], **k))
        kind = "int8-dynamic"
    else:
        import nncf

        from tensor_rewriting import openvino_backend as runtime
        real = nncf.compress_weights

        def skip_one(model, ignored_scope, **k):
            one = next(op.get_friendly_name() for op in model.get_ops()
                       if op.get_type_name() == "MatMul" and op.get_friendly_name() not in ignored_scope.names)
            return real(model, ignored_scope=nncf.IgnoredScope(names=[*ignored_scope.names, one]), **k)
        monkeypatch.setattr(nncf, "compress_weights", skip_one)
        kind = "int8-weights"
    runtime.build_fp32(program, model.config, fp32)
    with pytest.raises(UsageError, match=r"of the 12 decoder MatMuls \(1 stayed float\)"):
        runtime.build_from_fp32(kind, fp32, out)


def test_quantized_runtime_beyond_its_yardstick_fails():
    from tensor_rewriting.runtimes import check_against_eager

    model = random_model("tiny-random", 0, torch.float32, torch.device("cpu"))
    batches = make_batches([[2, 5, 9, 11], [2, 7]], 2, 1, left_pad=False, device=torch.device("cpu"))
    answer_ids = torch.tensor([10, 11, 12])
    from evaluation.answering import answer_logits

    off = check_against_eager(lambda m, b, a: answer_logits(m, b, a) + 0.5, model, batches, answer_ids, "int8-dynamic")
    assert not off["passed"] and off["max_abs_logit_diff"] > off["tolerance"] >= 2 * off["yardstick_max_abs_logit_diff"]


def refusal(argv, capsys) -> str:
    assert run_script(MODULE, argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1]


def fake_cuda(monkeypatch, providers: list[str]):
    import onnxruntime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: providers)
    monkeypatch.setattr("evaluation.modeling.random_model", lambda *a, **k: pytest.fail("loaded a model"))


def test_onnxruntime_on_cuda_without_onnxruntime_gpu_refused(base_args, monkeypatch, capsys):
    fake_cuda(monkeypatch, ["CPUExecutionProvider"])
    line = refusal([*base_args, "--backend", "onnxruntime", "--device", "cuda"], capsys)
    assert line.startswith("error: --backend onnxruntime on CUDA needs the onnxruntime-gpu package")


def test_cuda_providers_picked_and_cuda_only_modes(monkeypatch, capsys, base_args):
    from tensor_rewriting import ort_backend

    fake_cuda(monkeypatch, ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    cuda = torch.device("cuda")
    ort_backend.check_device("default", cuda)
    ort_backend.check_device("fp16", cuda)
    assert ort_backend.providers(cuda) == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                           "CPUExecutionProvider"]
    assert "runs on the CPU" in refusal([*base_args, "--backend", "onnxruntime", "--mode", "int8-dynamic",
                                         "--device", "cuda"], capsys)
    assert "runs on CUDA only" in refusal([*base_args, "--backend", "onnxruntime", "--mode", "fp16", "--device", "cpu"],
                                          capsys)
    assert "not on CUDA devices" in refusal([*base_args, "--backend", "openvino", "--device", "cuda"], capsys)


@pytest.mark.parametrize("argv, message", [
    (["--backend", "onnxruntime", "--decode", "generate"], "--decode generate is not supported"),
    (["--backend", "openvino", "--dtype", "bfloat16"], "exports the float32 model (--dtype float32)"),
    (["--backend", "openvino", "--shapes", "static"], "runs one export with dynamic shapes"),
    (["--backend", "onnxruntime", "--mode", "int8-weights"], "--backend onnxruntime has no --mode int8-weights"),
])
def test_refused_before_loading(argv, message, base_args, monkeypatch, capsys):
    monkeypatch.setattr("evaluation.modeling.random_model", lambda *a, **k: pytest.fail("loaded a model"))
    assert message in refusal([*base_args, *argv], capsys)


def test_openvino_bf16_needs_bf16_units(base_args, monkeypatch, capsys):
    monkeypatch.setattr("evaluation.results.native_bf16_matmul", lambda: False)
    assert "needs a CPU with bf16 matmul units" in refusal([*base_args, "--backend", "openvino", "--mode", "bf16"],
                                                            capsys)


@pytest.mark.parametrize("backend, mode, variant, dtype", [
    ("openvino", "bf16", "openvino-bf16", "bfloat16"),
    ("onnxruntime", "fp16", "onnxruntime-fp16", "float16"),
    ("onnxruntime", "int8-dynamic", "onnxruntime-int8-dynamic", "float32"),
    ("inductor", "default", "inductor-default-float32", "float32"),
])
def test_a_runtime_is_named_and_timed_by_the_precision_its_mode_computes_in(backend, mode, variant, dtype,
                                                                            monkeypatch):
    """The tables' dtype column and the roofline's peak follow the mode; the torch model loads in float32."""
    from evaluation import parse_config
    from tensor_rewriting import tensor_experiments
    cfg = parse_config("tensor_rewriting", tensor_experiments.CompileOptions,
                       ["--model", "tiny-random", "--backend", backend, "--mode", mode])
    assert (cfg.variant, cfg.dtype, cfg.to_dict()["dtype"]) == (variant, dtype, dtype)
    loaded = []
    monkeypatch.setattr(tensor_experiments, "load_model", lambda c, d, dt: loaded.append(dt))
    tensor_experiments.load(cfg, torch.device("cpu"))
    assert loaded == ["float32"]


@pytest.mark.e2e
def test_torch_weights_freed_after_the_check(base_args, tmp_path):
    """The timed passes run the runtime's copy only: apply leaves the torch model without weights."""
    from evaluation import parse_config
    from evaluation.resolve import resolve
    from tensor_rewriting.runtimes import apply_runtime
    from tensor_rewriting.tensor_experiments import CompileOptions

    cfg = parse_config("tensor_rewriting", CompileOptions, [*base_args, "--backend", "openvino",
                                                            "--runtime-cache-dir", str(tmp_path / "cache")])
    model = random_model("tiny-random", 0, torch.float32, torch.device("cpu"))
    applied = apply_runtime(model, cfg, resolve(cfg, torch.device("cpu"), tmp_path / "run"))
    assert all(p.device.type == "meta" for p in model.parameters())
    assert applied.footprint_bytes > 0 and applied.record["eager_check"]["passed"]


def test_artifact_built_in_a_child_appears_whole_or_not_at_all(tmp_path):
    import os

    from tensor_rewriting.runtime_cache import cached_artifact

    def refused(directory):
        (directory / "half.bin").write_bytes(b"x")
        raise UsageError("a partial conversion")

    with pytest.raises(UsageError, match="a partial conversion"):
        cached_artifact(str(tmp_path), "model", {"kind": "int8"}, refused)
    assert list(tmp_path.iterdir()) == []  # nothing a later run could take for an artifact

    def build(directory):
        (directory / "weights.bin").write_bytes(b"1234")
        return {"builder_pid": os.getpid()}

    path, first = cached_artifact(str(tmp_path), "model", {"kind": "fp32"}, build)
    assert not first["reused"] and first["builder_pid"] != os.getpid()  # built in a child process
    again = cached_artifact(str(tmp_path), "model", {"kind": "fp32"}, lambda d: pytest.fail("rebuilt"))[1]
    assert again["reused"] and again["artifact_dir"] == str(path) and (path / "weights.bin").read_bytes() == b"1234"


def test_a_killed_build_is_cleared_by_the_next_one(tmp_path):
    """A builder killed outright leaves its half-written directory (the model's size); the next build of that
    artifact removes it, and leaves alone one whose builder is still alive."""
    import os
    import subprocess
    import sys

    from tensor_rewriting.runtime_cache import build_into

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    final = tmp_path / "model-abc"
    killed = tmp_path / f".model-abc-building-{dead}-x1"
    alive = tmp_path / f".model-abc-building-{os.getpid()}-x2"
    for d in (killed, alive):
        d.mkdir()
        (d / "model.onnx.data").write_bytes(b"half")
    build_into(final, {"kind": "fp32"}, lambda d: (d / "w.bin").write_bytes(b"1") and {})
    assert (final / "meta.json").is_file() and not killed.exists() and alive.exists()
