"""OpenVINO: the torch.export program through OpenVINO's PyTorch frontend, run by the CPU plugin in float32, with
NNCF's int8 weight compression (with or without the plugin's dynamic int8 activations), or in bfloat16.

Artifacts: fp32 = the converted model as IR (float32 weights kept: save_model would halve them to float16 by
default); int8-weights = fp32 through nncf.compress_weights (int8 asymmetric, per output channel, every decoder
MatMul and the embeddings). Dynamic activation quantization and bf16 are compile options over those two artifacts."""
from __future__ import annotations

import collections
import time
from pathlib import Path

import openvino as ov
import torch

from evaluation import UsageError

MODEL_FILE = "model.xml"
# What each artifact is made with: part of its cache key, so a change here builds a new one
RECIPES = {"fp32": {"compress_to_fp16": False}, "int8-weights": {"mode": "INT8_ASYM", "ignored": "answer head"}}
# The ops between a compressed weight and its MatMul: NNCF stores u8 values, a zero point and a scale
DECOMPRESSION = {"Convert", "Subtract", "Multiply", "Reshape", "Transpose"}
INT_TYPES = {"u8", "i8", "u4", "i4"}
DYNAMIC_QUANTIZATION_GROUP = 32  # the CPU plugin's default: one int8 scale per 32 activations of a row
RECORDED_PROPERTIES = ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "INFERENCE_PRECISION_HINT",
                       "DYNAMIC_QUANTIZATION_GROUP_SIZE", "EXECUTION_DEVICES", "ENABLE_CPU_PINNING")


def artifact_kind(mode: str) -> str:
    return "int8-weights" if mode.startswith("int8-weights") else "fp32"


def check_device(mode: str, device: torch.device) -> None:
    from evaluation.results import native_bf16_matmul

    if device.type == "cuda":
        raise UsageError("--backend openvino runs on CPUs (and Intel GPUs), not on CUDA devices: use --device cpu")
    if mode == "bf16" and not native_bf16_matmul():
        raise UsageError("--backend openvino --mode bf16 needs a CPU with bf16 matmul units (AVX-512 BF16 or AMX); "
                         "this one has none")


def build_fp32(program, config, directory: Path) -> dict:
    t0 = time.perf_counter()
    model = ov.convert_model(program)
    ov.save_model(model, str(directory / MODEL_FILE), **RECIPES["fp32"])
    return {"convert_s": time.perf_counter() - t0}


def build_from_fp32(kind: str, fp32_dir: Path, directory: Path) -> dict:
    """int8-weights: nncf.compress_weights on every MatMul but the answer head (3 rows: no time to gain, left
    float as in torch.ao's dynamic int8) and on the embeddings; refused unless every decoder MatMul came out int8."""
    import nncf

    model = ov.Core().read_model(str(fp32_dir / MODEL_FILE))
    head = model.outputs[0].get_node().input_value(0).get_node()  # the graph ends in linear(last, answer_head)
    before = weight_ops(model)
    compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode[RECIPES["int8-weights"]["mode"]],
                                       ignored_scope=nncf.IgnoredScope(names=[head.get_friendly_name()]))
    after = weight_ops(compressed)
    decoder = before["matmul_float"] - 1
    if after["matmul_float"] != 1 or after["matmul_int"] != decoder:
        raise UsageError(f"openvino int8-weights compressed {after['matmul_int']} of the {decoder} decoder MatMuls "
                         f"({after['matmul_float'] - 1} stayed float); a partial conversion is not reported")
    ov.save_model(compressed, str(directory / MODEL_FILE), **RECIPES["fp32"])
    return {"weight_matmuls": decoder, "quantized_matmuls": after["matmul_int"],
            "quantized_fraction": after["matmul_int"] / decoder, "float_matmuls": {"answer head": 1},
            "embeddings_quantized": f"{after['gather_int']} of {before['gather_float']}",
            "scheme": "nncf int8 asymmetric weights, one scale and zero point per output channel"}


def weight_constant(value) -> ov.Node | None:
    """The Constant behind a weight input, through NNCF's decompression ops; None for an activation."""
    node = value.get_node()
    while node.get_type_name() in DECOMPRESSION:
        node = node.input_value(0).get_node()
    return node if node.get_type_name() == "Constant" else None


def weight_ops(model: ov.Model) -> dict:
    """MatMuls and embedding Gathers with a stored weight, by whether that weight is float or integer."""
    counts = collections.Counter()
    for op in model.get_ops():
        kind = {"MatMul": ("matmul", 1), "Gather": ("gather", 0)}.get(op.get_type_name())
        const = weight_constant(op.input_value(kind[1])) if kind else None
        if const is not None:
            counts[f"{kind[0]}_{'int' if const.get_element_type().get_type_name() in INT_TYPES else 'float'}"] += 1
    return {k: counts[k] for k in ("matmul_float", "matmul_int", "gather_float", "gather_int")}


def compile_config(mode: str, threads: int) -> dict:
    # float32 must be asked for: on a CPU with bf16 units the plugin infers in bf16 unless told otherwise, and it
    # quantizes activations of compressed-weight MatMuls by default (group size 32), so "off" is explicit too
    return {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": "bf16" if mode == "bf16" else "f32",
            "DYNAMIC_QUANTIZATION_GROUP_SIZE": DYNAMIC_QUANTIZATION_GROUP if mode == "int8-weights-dynamic" else 0}


def executed_ops(compiled: ov.CompiledModel, original: dict[str, str]) -> tuple[dict, dict]:
    """(runtime layer type@precision -> count, fusions): a fusion is a runtime layer made of several original
    ops, named by their types (e.g. Subgraph <- ScaledDotProductAttention+Softmax+Transpose)."""
    layers, fusions = collections.Counter(), collections.Counter()
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        kind = info["layerType"].astype(str)
        if kind in ("Const", "Input", "Output"):
            continue
        layers[f"{kind}@{info['runtimePrecision'].astype(str)}"] += 1
        parts = sorted({original[n] for n in info["originalLayersNames"].astype(str).split(",") if n in original})
        if len(parts) > 1:
            fusions[f"{kind} <- {'+'.join(parts)}"] += 1
    return dict(layers.most_common()), dict(fusions.most_common())


def readable(value) -> str:
    return value.get_type_name() if isinstance(value, ov.Type) else str(value)


class OVRunner:
    """The 4 prompt tensors -> [B, 3] float32 logits from the CPU plugin; .stats() for the run record."""

    def __init__(self, artifact: Path, mode: str, threads: int):
        core = ov.Core()
        t0 = time.perf_counter()
        model = core.read_model(str(artifact / MODEL_FILE))
        original = {op.get_friendly_name(): op.get_type_name() for op in model.get_ops()}
        self.compiled = core.compile_model(model, "CPU", compile_config(mode, threads))
        del model
        self.request = self.compiled.create_infer_request()
        self.load_s = time.perf_counter() - t0
        self.layers, self.fusions = executed_ops(self.compiled, original)
        self.device_name = core.get_property("CPU", "FULL_DEVICE_NAME")

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        out = self.request.infer([t.cpu().numpy() for t in tensors])
        return torch.from_numpy(out[0])

    def stats(self) -> dict:
        return {"runtime": "openvino", "version": ov.get_version(), "device": "CPU", "device_name": self.device_name,
                "load_s": self.load_s,
                "config": {k: readable(self.compiled.get_property(k)) for k in RECORDED_PROPERTIES},
                "ops_run": self.layers, "fusions": self.fusions}
