"""Quantization-aware training: fake-quantize the decoder Linears, fine-tune, convert to int8/int4, evaluate.

torchao's QAT flow with int8 dynamic (per-token, asymmetric) activations and int4 (per group) or int8 (per row)
symmetric weights: quantize_(QATConfig(base, step="prepare")) -> the shared fine-tuning loop on the PubMedQA
train/dev half (never a test PMID) -> quantize_(QATConfig(base, step="convert")). The converted model is saved
as safetensors (torchao's tensor-subclass flattening) and evaluated with the harness. --no-convert evaluates
the fine-tuned model with its fake quantization removed (plain float Linears) for comparison.

    python quantization/qat.py --model tiny-random --tokenizer-dir ../shared/data/biogpt-large \
        --data-dir ../shared/data/pubmedqa --limit 20 --steps 20 --weights int4
"""
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's evaluation/ and quantization/

from evaluation import (UsageError, build_parser, config_from_args, evaluate_and_log, load_model, load_finetuning_data,
                        prepare, resolve_device, run_main, weight_bytes)
from evaluation.config import positive_int
from evaluation.finetune import finetune
from quantization.int8_layers import is_decoder_linear, kernel_path

WEIGHTS = ("int4", "int8")


def qat_base_config(weights: str, group_size: int):
    """The PTQ config QAT simulates while training and applies at convert time."""
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig
    from torchao.quantization.granularity import PerAxis, PerGroup

    if weights not in WEIGHTS:
        raise UsageError(f"unknown --weights {weights!r}; choose from {', '.join(WEIGHTS)}")
    granularity = PerGroup(group_size) if weights == "int4" else PerAxis(0)
    return Int8DynamicActivationIntxWeightConfig(weight_dtype=getattr(torch, weights), weight_granularity=granularity)


def qat_step(model, base_config, step: str) -> None:
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    quantize_(model, QATConfig(base_config, step=step), filter_fn=is_decoder_linear)


def drop_fake_quantization(model) -> None:
    """FakeQuantizedLinear -> the plain nn.Linear holding the same fine-tuned weights."""
    from torchao.quantization.qat.linear import FakeQuantizedLinear

    for name, module in list(model.named_modules()):
        if isinstance(module, FakeQuantizedLinear):
            parent, child = name.rsplit(".", 1)
            setattr(model.get_submodule(parent), child, module.to_linear())


def save_checkpoint(model, directory: Path, description: dict) -> Path:
    """model.safetensors (torchao tensor subclasses flattened to plain tensors + JSON metadata) + config.json."""
    from safetensors.torch import save_file
    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items() if k != "output_projection.weight"}  # tied to embed_tokens
    tensors, metadata = flatten_tensor_state_dict(state)
    metadata["qat"] = json.dumps(description)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(directory / "model.safetensors"), metadata)
    model.config.save_pretrained(directory)
    return directory / "model.safetensors"


def load_checkpoint(directory):
    """The saved model back, without pickle: a fresh model of the saved config, prepared and converted like the
    original, then the safetensors state assigned into it."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    from torchao.prototype.safetensors.safetensors_support import unflatten_tensor_state_dict
    from transformers import BioGptConfig, BioGptForCausalLM

    directory = Path(directory)
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        metadata = f.metadata()
    description = json.loads(metadata["qat"])
    model = BioGptForCausalLM(BioGptConfig.from_pretrained(directory)).eval()
    if description["converted"]:
        base = qat_base_config(description["weights"], description["group_size"])
        qat_step(model, base, "prepare")
        qat_step(model, base, "convert")
    state, leftover = unflatten_tensor_state_dict(load_file(str(directory / "model.safetensors")), metadata)
    missing, unexpected = model.load_state_dict(state | leftover, strict=False, assign=True)
    if set(missing) - {"output_projection.weight"} or unexpected:
        raise ValueError(f"{directory}: checkpoint does not fit its config: missing {missing}, extra {unexpected}")
    model.tie_weights()  # the LM head shares the token embedding again
    return model


def make_parser():
    p = build_parser(__doc__.splitlines()[0])
    g = p.add_argument_group("quantization-aware training")
    g.add_argument("--weights", choices=WEIGHTS, default="int4", help="weight precision (activations: dynamic int8)")
    g.add_argument("--group-size", type=int, choices=[32, 64, 128, 256], default=32,
                   help="int4 weights: input channels sharing one scale")
    g.add_argument("--steps", type=int, default=100, help="optimizer steps of fine-tuning (positive)")
    g.add_argument("--train-batch-size", type=positive_int, default=4, help="training examples per micro-batch")
    g.add_argument("--lr", type=float, default=1e-5, help="peak learning rate (linear warmup 10%%, linear decay)")
    g.add_argument("--grad-accum", type=positive_int, default=1, help="micro-batches per optimizer step")
    g.add_argument("--bf16-autocast", action="store_true", help="train under bfloat16 autocast (CUDA only)")
    g.add_argument("--no-convert", action="store_true",
                   help="evaluate the fine-tuned model without quantization (fake quantization removed)")
    g.add_argument("--save-dir", default=None,
                   help="where to save the model (model.safetensors + config.json); default RUN_DIR/model")
    return p


def main():
    args = make_parser().parse_args()
    if args.steps <= 0:
        raise UsageError(f"--steps must be a positive integer, got {args.steps}")
    device = resolve_device(args.device)
    if args.bf16_autocast and device.type != "cuda":
        raise UsageError("--bf16-autocast is a CUDA option; this run is on the CPU")
    variant = f"qat-da8w{args.weights[3:]}" + ("-g%d" % args.group_size if args.weights == "int4" else "")
    cfg = config_from_args(args, technique="quantization", variant=variant + ("-noconvert" if args.no_convert else ""))
    questions, run_dir = prepare(cfg)
    train, test_pmids = load_finetuning_data(cfg.data_dir)  # all 500 test PMIDs, not just the --limit ones
    if cfg.model == "biogpt-large-random":
        print("note: biogpt-large-random has random weights: QAT here is only a speed/memory exercise, "
              "its accuracy means nothing")

    t0 = time.perf_counter()
    model, tokenizer = load_model(cfg)
    load_s = time.perf_counter() - t0
    float_bytes = weight_bytes(model)

    base = qat_base_config(args.weights, args.group_size)
    t0 = time.perf_counter()
    qat_step(model, base, "prepare")
    history = finetune(model, tokenizer, train, steps=args.steps, test_pmids=test_pmids,
                       batch_size=args.train_batch_size, lr=args.lr, grad_accum=args.grad_accum,
                       bf16_autocast=args.bf16_autocast, seed=cfg.seed)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    drop_fake_quantization(model) if args.no_convert else qat_step(model, base, "convert")
    convert_s = time.perf_counter() - t0

    description = {"weights": args.weights, "group_size": args.group_size if args.weights == "int4" else None,
                   "activations": "int8 dynamic per-token asymmetric", "converted": not args.no_convert,
                   "backend": "torchao-qat" if not args.no_convert else "torchao-qat-noconvert",
                   "steps": args.steps, "train_questions": len(train)}
    # the harness replaces the run directory when it writes results: save into it afterwards
    checkpoint = Path(args.save_dir) if args.save_dir else run_dir / "model"
    quantized_bytes = weight_bytes(model)
    losses = [h["train_loss"] for h in history]
    print(f"QAT {variant}: {args.steps} steps in {train_s:.1f} s, loss {losses[0]:.3f} -> {losses[-1]:.3f}; "
          f"{'fine-tuned float model' if args.no_convert else 'converted'}: {float_bytes / 2**20:.1f} MiB -> "
          f"{quantized_bytes / 2**20:.1f} MiB")
    evaluate_and_log(cfg, model, tokenizer, questions, run_dir, load_s=load_s, setup_s=train_s + convert_s,
                     curves={"finetune": history}, extra={"quantization": description | {
                         "train_s": train_s, "convert_s": convert_s, "kernel_path": kernel_path(model),
                         "float_weight_bytes": float_bytes, "quantized_weight_bytes": quantized_bytes,
                         "weight_bytes_ratio": quantized_bytes / float_bytes,
                         "checkpoint": str(checkpoint / "model.safetensors"),
                         "train_loss_first": losses[0], "train_loss_last": losses[-1], "train_history": history}})
    print(f"saved {save_checkpoint(model, checkpoint, description)} (load with quantization.qat.load_checkpoint)")


if __name__ == "__main__":
    run_main(main)
