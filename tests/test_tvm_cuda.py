"""TVM on CUDA without a GPU: the runtime check names what is missing, and the project's CUDA builds (export_relax +
tvm.compile's dlight pipeline) give kernel source that nvcc compiles for sm_90, with tensor cores in fp16 only."""
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("tensor_rewriting.tvm_relax")  # Apache TVM is an optional dependency
import tvm  # noqa: E402

from evaluation import UsageError  # noqa: E402
from tensor_rewriting.tvm_relax import compiler, cuda_env  # noqa: E402

H100 = {"kind": "cuda", "arch": "sm_90"}


def other_checks_pass(monkeypatch, nvrtc=True, runtime=True, device=True):
    """Stand-ins for the checks a test does not examine: each passes, whatever this machine has."""
    if nvrtc:
        monkeypatch.setattr(cuda_env, "nvrtc_problems", lambda: [])
    if runtime:
        monkeypatch.setattr(cuda_env, "tvm_cuda_runtime_error", lambda: None)
    if device:
        monkeypatch.setattr(tvm.runtime.Device, "exist", property(lambda self: True))


def fake_cuda_bindings(monkeypatch, nvrtc_version):
    monkeypatch.setitem(sys.modules, "cuda.bindings",
                        types.SimpleNamespace(nvrtc=types.SimpleNamespace(nvrtcVersion=nvrtc_version)))


def test_check_passes_when_nothing_is_missing(monkeypatch):
    other_checks_pass(monkeypatch)
    cuda_env.check_cuda_runtime()


def test_check_names_missing_cuda_bindings(monkeypatch):
    other_checks_pass(monkeypatch, nvrtc=False)
    monkeypatch.setitem(sys.modules, "cuda.bindings", None)  # import cuda.bindings now raises ImportError
    with pytest.raises(UsageError, match="cuda-bindings is not importable.*pip install 'cuda-bindings>=13,<14'"):
        cuda_env.check_cuda_runtime()


def test_check_names_missing_nvrtc_library_and_headers(monkeypatch, tmp_path):
    other_checks_pass(monkeypatch, nvrtc=False)

    def no_library():
        raise RuntimeError('Failure finding "libnvrtc.so.13"')

    fake_cuda_bindings(monkeypatch, no_library)
    monkeypatch.setenv("CUDA_PATH", str(tmp_path))  # a toolkit root without headers
    with pytest.raises(UsageError) as e:
        cuda_env.check_cuda_runtime()
    assert "cuda-bindings finds no NVRTC library" in str(e.value) and "nvidia-cuda-nvrtc>=13,<14" in str(e.value)
    assert f"no CUDA headers under {tmp_path}" in str(e.value) and "set CUDA_PATH" in str(e.value)

    fake_cuda_bindings(monkeypatch, lambda: (0, 12, 8))
    with pytest.raises(UsageError, match="NVRTC is CUDA 12.8, TVM's CUDA runtime is CUDA 13"):
        cuda_env.check_cuda_runtime()


def test_check_names_what_the_tvm_cuda_runtime_could_not_load(monkeypatch):
    other_checks_pass(monkeypatch, runtime=False)
    monkeypatch.setattr(tvm.runtime, "enabled", lambda target: False)
    import tvm_ffi.libinfo

    for missing, says in [("libcuda.so.1", "no NVIDIA driver"), ("libcudart.so.13", "no CUDA 13 runtime library")]:
        def load(*args, missing=missing, **kwargs):
            raise OSError(f"{missing}: cannot open shared object file: No such file or directory")

        monkeypatch.setattr(tvm_ffi.libinfo, "load_lib_ctypes", load)
        with pytest.raises(UsageError, match=f"{says}.*{missing}"):
            cuda_env.check_cuda_runtime()


@pytest.mark.parametrize("driver, says", [(12080, "the NVIDIA driver supports CUDA up to 12.8; TVM's CUDA runtime "
                                                   "is CUDA 13 and needs a driver for it"),
                                          (None, "no NVIDIA driver"),
                                          (13000, "no CUDA device 0 visible")])
def test_check_explains_a_missing_device(monkeypatch, driver, says):
    other_checks_pass(monkeypatch, device=False)
    monkeypatch.setattr(tvm.runtime.Device, "exist", property(lambda self: False))
    monkeypatch.setattr(cuda_env, "cuda_driver_version", lambda: driver)
    with pytest.raises(UsageError, match=says):
        cuda_env.check_cuda_runtime()


def test_compiler_on_cuda_fails_with_the_reason_not_a_value_error():
    if tvm.cuda(0).exist:
        pytest.skip("this machine has a CUDA device for TVM")
    module = torch.nn.Linear(4, 4)
    with pytest.raises(UsageError, match="--backend tvm cannot use CUDA here: "):
        compiler.TVMCompiler(module, "default", torch.device("cuda"), 1, "", None)


def tiny_model_inputs(dtype):
    """A 1-layer tiny-random AnswerLogits at 1 x 128 tokens, hidden 128: every projection's extents exceed 64,
    the least at which dlight's Matmul rule tensorizes."""
    from evaluation.answering import make_batches
    from evaluation.modeling import random_model
    from tensor_rewriting.hot_path import AnswerLogits

    model = random_model("tiny-random", 0, dtype, torch.device("cpu"), num_hidden_layers=1, hidden_size=128)
    (batch,) = make_batches([list(range(2, 130))], 1, 1, left_pad=False, device=torch.device("cpu"))
    return (AnswerLogits(model, torch.tensor([10, 11, 12])).eval(),
            (batch.input_ids, batch.attention_mask, batch.position_ids, batch.last_index))


@pytest.fixture(scope="module")
def h100_builds():
    """{dtype: (TVMCompiler stats, CUDA source)}: TVMCompiler as on an H100 box, built here without a GPU."""
    builds = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compiler, "tvm_target", lambda device: tvm.target.Target(H100))
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            module, inputs = tiny_model_inputs(dtype)
            compiled = compiler.TVMCompiler(module, "default", torch.device("cuda"), 1, "", None)
            executable, _ = compiled.compile(inputs)
            builds[str(dtype).removeprefix("torch.")] = compiled.stats(), compiler.cuda_source(executable)
    return builds


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.e2e
def test_cuda_build_compiles_to_sm90_cubin_with_nvcc(h100_builds, dtype, tmp_path):
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc on PATH to compile TVM's CUDA source with")
    stats, source = h100_builds[dtype]
    # dlight bound every kernel to GPU threads: TVM refuses to build an unbound one, so the build itself says so
    assert stats["compilations"] == 0 and stats["build_s"] > 0
    (tmp_path / "kernels.cu").write_text(source)
    proc = subprocess.run([nvcc, "-cubin", "-arch=sm_90", "-o", str(tmp_path / "kernels.cubin"),
                           str(tmp_path / "kernels.cu")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "kernels.cubin").stat().st_size > 0


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.e2e
def test_cuda_build_compiles_with_nvrtc_as_at_load_time(h100_builds, dtype):
    """TVM's own load-time route (tvm_callback_cuda_compile -> NVRTC via cuda-bindings), run without a GPU."""
    problems = cuda_env.nvrtc_problems()
    if problems:
        pytest.skip("; ".join(problems))
    from tvm.support.nvcc import compile_cuda

    assert len(compile_cuda(h100_builds[dtype][1], target_format="cubin", arch="sm_90", compiler="nvrtc")) > 0


@pytest.mark.e2e
def test_tensor_cores_in_float16_only(h100_builds):
    for dtype, (stats, source) in h100_builds.items():
        used, kernels = compiler.tensor_core_kernels(source)
        assert kernels > 10 and stats["tensor_cores"] == (used > 0), dtype
    fp16, bf16, fp32 = (h100_builds[d][0] for d in ("float16", "bfloat16", "float32"))
    assert fp16["tensor_cores"] is True and "wmma" in h100_builds["float16"][1]
    assert bf16["tensor_cores"] is False and "only float16 and int8" in bf16["tensor_cores_reason"]
    assert fp32["tensor_cores"] is False


def test_no_tensor_core_field_on_cpu():
    compiled = compiler.TVMCompiler(torch.nn.Linear(4, 4), "default", torch.device("cpu"), 1, "", None)
    assert compiled.stats()["tensor_cores"] is None
