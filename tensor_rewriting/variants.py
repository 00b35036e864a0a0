"""The tensor-rewriting variants the matrix runs (python -m evaluation.matrix): torch.compile backends and modes,
TVM, ONNX Runtime and OpenVINO, and the attention kernels; sweeps/ are written from this list. "cpu": in the CPU
benchmark (--suite cpu)."""
from evaluation.matrix import Variant
from tensor_rewriting.attention_experiments import AttentionOptions
from tensor_rewriting.tensor_experiments import CompileOptions


def compiled(backend: str, mode: str, *flags: str, suites: tuple[str, ...] = ()) -> Variant:
    name = "-".join(["tensor", backend, mode, *flags[1::2]])
    return Variant(name, CompileOptions, ("--backend", backend, "--mode", mode, *flags), suites)


VARIANTS = [
    compiled("eager", "default"),
    compiled("aot_eager", "default"),
    compiled("inductor", "default", suites=("cpu",)),
    compiled("inductor", "reduce-overhead"),
    compiled("inductor", "max-autotune"),
    compiled("cudagraphs", "default"),
    compiled("tvm", "default", suites=("cpu",)),
    compiled("tvm", "ansor"),
    compiled("inductor", "default", "--dtype", "bfloat16", suites=("cpu",)),
    compiled("onnxruntime", "default", suites=("cpu",)),
    compiled("onnxruntime", "int8-dynamic", suites=("cpu",)),
    compiled("onnxruntime", "fp16"),
    compiled("openvino", "default", suites=("cpu",)),
    compiled("openvino", "int8-weights", suites=("cpu",)),
    compiled("openvino", "int8-weights-dynamic", suites=("cpu",)),
    compiled("openvino", "bf16", suites=("cpu",)),
    *(Variant(f"attention-{k}", AttentionOptions, ("--kernel", k))
      for k in ("eager", "sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn")),
]
