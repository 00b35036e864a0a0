"""ONNX Runtime: the exported graph with onnxruntime.transformers' fusions, in float32, dynamic int8 or float16,
run by an InferenceSession on the CPU, CUDA or TensorRT execution provider.

Artifacts: fp32 = the ONNX export after the transformers optimizer (the fusions it applies are recorded);
int8-dynamic = fp32 through onnxruntime.quantization.quantize_dynamic (every decoder MatMul: int8 weights per
channel, uint8 activations quantized per call); fp16 = fp32 in float16, float32 in and out (CUDA only)."""
from __future__ import annotations

import collections
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from evaluation import UsageError
from tensor_rewriting.onnx_export import INPUT_NAMES, write_onnx

MODEL_FILE = "model.onnx"
# What each artifact is made with: part of its cache key, so a change here builds a new one
RECIPES = {"fp32": {"transformers_optimizer": "gpt2", "opt_level": 0},
           "int8-dynamic": {"nodes": "decoder MatMuls", "per_channel": True, "weight_type": "QInt8"},
           "fp16": {"keep_io_types": True}}
# ONNX Runtime's quantized MatMul forms: what quantize_dynamic writes and what the session fuses it into
QUANTIZED_MATMULS = {"MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QGemm", "QLinearMatMul"}


def check_device(mode: str, device: torch.device) -> None:
    """Before any loading: CUDA needs the onnxruntime-gpu build; dynamic int8 runs on the CPU only, float16 on
    CUDA only (float16 is a GPU format for ONNX Runtime: its CPU provider's float16 kernels are few)."""
    if device.type == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        raise UsageError("--backend onnxruntime on CUDA needs the onnxruntime-gpu package (this onnxruntime has "
                         f"{', '.join(ort.get_available_providers())}): pip uninstall onnxruntime && "
                         "pip install onnxruntime-gpu; or run with --device cpu")
    if mode == "int8-dynamic" and device.type == "cuda":
        raise UsageError("--backend onnxruntime --mode int8-dynamic runs on the CPU (ONNX Runtime's dynamic int8 "
                         "kernels are CPU kernels); on CUDA use --mode default or fp16")
    if mode == "fp16" and device.type != "cuda":
        raise UsageError("--backend onnxruntime --mode fp16 runs on CUDA only; on a CPU use --mode default or "
                         "int8-dynamic")


def providers(device: torch.device) -> list[str]:
    if device.type != "cuda":
        return ["CPUExecutionProvider"]
    gpu = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in ort.get_available_providers()]
    return gpu + ["CPUExecutionProvider"]


def artifact_kind(mode: str) -> str:
    return "fp32" if mode == "default" else mode


def build_fp32(program, config, directory: Path) -> dict:
    """Export, then onnxruntime.transformers' fusions for a GPT-2-like decoder (BioGPT is one). Attention is not
    fused (the exporter's decomposed scaled_dot_product_attention is not a pattern it knows): the counts say so."""
    from onnxruntime.transformers import optimizer

    t0 = time.perf_counter()
    exported = directory / "exported.onnx"
    write_onnx(program, exported)
    export_s = time.perf_counter() - t0
    recipe = RECIPES["fp32"]
    optimized = optimizer.optimize_model(str(exported), model_type=recipe["transformers_optimizer"],
                                         num_heads=config.num_attention_heads, hidden_size=config.hidden_size,
                                         opt_level=recipe["opt_level"])
    optimized.save_model_to_file(str(directory / MODEL_FILE), use_external_data_format=True)
    for p in directory.glob("exported.onnx*"):
        p.unlink()
    fusions = {k: v for k, v in optimized.get_fused_operator_statistics().items() if v}
    return {"export_s": export_s, "optimize_s": time.perf_counter() - t0 - export_s,
            "transformers_optimizer_fusions": fusions}


def weight_matmuls(path: Path) -> dict:
    """Names of the nodes that multiply by a stored weight: float MatMuls (the decoder's Linears, on [B, T, H]
    activations), float Gemms (the 3-row answer head, on [B, H]) and quantized MatMuls."""
    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    nodes = [n for n in graph.node if len(n.input) > 1 and n.input[1] in weights]
    return {kind: [n.name for n in nodes if n.op_type in ops]
            for kind, ops in (("MatMul", {"MatMul"}), ("Gemm", {"Gemm"}), ("quantized", QUANTIZED_MATMULS))}


def build_int8(fp32_dir: Path, directory: Path) -> dict:
    """quantize_dynamic over every decoder MatMul: int8 weights with a scale per output channel (as the
    quantization technique's torch.ao dynamic-int8), uint8 activations quantized per call. The answer head stays
    float, as in torch.ao's (3 rows: no time to gain). A graph with any decoder MatMul left float is refused."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    before = weight_matmuls(fp32_dir / MODEL_FILE)
    logging.getLogger().addFilter(lambda r: "consider to run pre-processing" not in r.getMessage())
    recipe = RECIPES["int8-dynamic"]
    quantize_dynamic(fp32_dir / MODEL_FILE, directory / MODEL_FILE, op_types_to_quantize=["MatMul"],
                     nodes_to_quantize=before["MatMul"], per_channel=recipe["per_channel"],
                     weight_type=QuantType[recipe["weight_type"]], use_external_data_format=True)
    after = weight_matmuls(directory / MODEL_FILE)
    left_float = len(after["MatMul"]) + len(after["Gemm"]) - len(before["Gemm"])  # the head may come back a MatMul
    if left_float or len(after["quantized"]) != len(before["MatMul"]):
        raise UsageError(f"onnxruntime int8-dynamic quantized {len(after['quantized'])} of the "
                         f"{len(before['MatMul'])} decoder MatMuls ({left_float} stayed float); a partial "
                         "conversion is not reported")
    return {"weight_matmuls": len(before["MatMul"]), "quantized_matmuls": len(after["quantized"]),
            "quantized_fraction": len(after["quantized"]) / len(before["MatMul"]),
            "float_matmuls": {"answer head": len(before["Gemm"])},
            "scheme": "int8 weights per output channel, uint8 activations quantized per call (per tensor)"}


def build_from_fp32(kind: str, fp32_dir: Path, directory: Path) -> dict:
    return (build_int8 if kind == "int8-dynamic" else build_fp16)(fp32_dir, directory)


def build_fp16(fp32_dir: Path, directory: Path) -> dict:
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = OnnxModel(onnx.load(str(fp32_dir / MODEL_FILE)))
    model.convert_float_to_float16(**RECIPES["fp16"])
    model.save_model_to_file(str(directory / MODEL_FILE), use_external_data_format=True)
    return {"scheme": "float16 weights and activations, float32 inputs and outputs"}


def profile_op_types(session: ort.InferenceSession) -> dict:
    """'OP@PROVIDER' -> count over the nodes the session ran in its first call: the fused graph as executed."""
    events = json.loads(Path(session.end_profiling()).read_text())
    ran = collections.Counter(f"{e['args']['op_name']}@{e['args'].get('provider', '?')}" for e in events
                              if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"))
    return dict(ran.most_common())


class ORTRunner:
    """The 4 prompt tensors -> [B, 3] float32 logits from an InferenceSession; .stats() for the run record."""

    def __init__(self, artifact: Path, device: torch.device, threads: int, max_shape: tuple[int, int]):
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.profile_dir = tempfile.TemporaryDirectory(prefix="ort-profile-")
        options.enable_profiling, options.profile_file_prefix = True, f"{self.profile_dir.name}/first-call"
        chosen = providers(device)
        options_per_provider = [tensorrt_options(artifact, max_shape) if p == "TensorrtExecutionProvider" else
                                {"device_id": device.index or 0} if p == "CUDAExecutionProvider" else {}
                                for p in chosen]
        t0 = time.perf_counter()
        self.session = ort.InferenceSession(str(artifact / MODEL_FILE), options, providers=chosen,
                                            provider_options=options_per_provider)
        self.load_s = time.perf_counter() - t0
        self.ops_run = None

    def __call__(self, *tensors: torch.Tensor) -> torch.Tensor:
        feed = {name: t.cpu().numpy() for name, t in zip(INPUT_NAMES, tensors)}
        out = torch.from_numpy(np.asarray(self.session.run(None, feed)[0]))
        if self.ops_run is None:  # profiling ends after the first call: later calls run unobserved
            self.ops_run = profile_op_types(self.session)
            self.profile_dir.cleanup()
        return out

    def stats(self) -> dict:
        return {"runtime": "onnxruntime", "version": ort.__version__, "providers": self.session.get_providers(),
                "graph_optimization_level": "ORT_ENABLE_ALL", "load_s": self.load_s, "ops_run": self.ops_run}


def tensorrt_options(artifact: Path, max_shape: tuple[int, int]) -> dict:
    """One TensorRT engine for every batch up to the largest [rows, length] (else it builds one per new shape,
    inside the timed passes), cached beside the artifact (engines belong to a GPU, the artifact does not)."""
    rows, length = max_shape
    shapes = lambda r, t: ",".join(f"{n}:{r}x{t}" for n in INPUT_NAMES[:3]) + f",last_index:{r}"  # noqa: E731
    return {"trt_profile_min_shapes": shapes(1, 1), "trt_profile_opt_shapes": shapes(rows, length),
            "trt_profile_max_shapes": shapes(rows, length), "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(artifact.with_name(artifact.name + "-tensorrt"))}
