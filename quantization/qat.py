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
from dataclasses import dataclass
from pathlib import Path

import evaluation  # first: a Ctrl-C while torch imports is then one line, not a traceback
import torch

from evaluation import Applied, Options, UsageError, load_finetuning_data, main, option, require_all_converted
from evaluation.finetune import finetune
from quantization.int8_layers import INT4_GROUP_SIZES, is_decoder_linear

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


@dataclass(frozen=True)
class QATOptions(Options):
    weights: str = option("int4", "Weight precision (activations: dynamic int8).", choices=WEIGHTS)
    group_size: int | None = option(None, "int4 weights: input channels sharing one scale; 32 when not given.",
                                    choices=INT4_GROUP_SIZES)
    steps: int = option(100, "Optimizer steps of fine-tuning.")
    train_batch_size: int = option(4, "Training examples per micro-batch.")
    lr: float = option(1e-5, "Peak learning rate (linear warm-up over the first tenth of the steps, then linear "
                             "decay).")
    grad_accum: int = option(1, "Micro-batches per optimizer step.")
    bf16_autocast: bool = option(False, "Train under bfloat16 autocast (CUDA only).")
    no_convert: bool = option(False, "Evaluate the fine-tuned model without quantization (fake quantization "
                                     "removed), for comparison.")
    save_dir: str | None = option(None, "Where to save the model (model.safetensors + config.json); by default "
                                        "RUN_DIR/model.")

    def __post_init__(self):
        for name in ("steps", "train_batch_size", "grad_accum"):
            if getattr(self, name) <= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.group_size is not None and self.weights != "int4":
            raise UsageError("--group-size applies to --weights int4 only")
        if self.weights == "int4" and self.group_size is None:
            object.__setattr__(self, "group_size", 32)

    @property
    def variant(self) -> str:
        return (f"qat-da8w{self.weights[3:]}" + (f"-g{self.group_size}" if self.group_size else "")
                + ("-noconvert" if self.no_convert else ""))

    def check(self, cfg, device):
        if self.bf16_autocast and device.type != "cuda":
            raise UsageError("--bf16-autocast is a CUDA option; this run is on the CPU")


def apply(model, cfg, run) -> Applied:
    """prepare (fake quantization) -> fine-tune on the train/dev half -> convert (or drop the fake quantization)."""
    opts = cfg.options
    train, test_pmids = load_finetuning_data(cfg.data_dir)  # all 500 test PMIDs, not just the --limit ones
    base = qat_base_config(opts.weights, opts.group_size)
    qat_step(model, base, "prepare")
    history = finetune(model, run.tokenizer, train, steps=opts.steps, test_pmids=test_pmids,
                       batch_size=opts.train_batch_size, lr=opts.lr, grad_accum=opts.grad_accum,
                       bf16_autocast=opts.bf16_autocast, seed=cfg.seed, prompt_ids=run.prompt_ids)
    drop_fake_quantization(model) if opts.no_convert else qat_step(model, base, "convert")
    description = {"weights": opts.weights, "group_size": opts.group_size,
                   "activations": "int8 dynamic per-token asymmetric", "converted": not opts.no_convert,
                   "steps": opts.steps, "train_questions": len(train)}
    losses = [h["train_loss"] for h in history]
    print(f"QAT {cfg.variant}: {opts.steps} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}")

    def save(run_dir: Path):
        path = save_checkpoint(model, Path(opts.save_dir) if opts.save_dir else run_dir / "model", description)
        print(f"saved {path} (load with quantization.qat.load_checkpoint)")

    linears = None if opts.no_convert else require_all_converted(model, f"QAT {cfg.variant}")
    return Applied(record={**description, "linears": linears, "train_loss_first": losses[0],
                           "train_loss_last": losses[-1], "train_history": history}, curves={"finetune": history}, save=save)


if __name__ == "__main__":
    main("quantization", QATOptions, apply, description=__doc__.splitlines()[0])
