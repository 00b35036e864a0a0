"""Attention kernels: BioGPT's attention run by transformers' eager code, or by PyTorch's scaled_dot_product_attention
with its dispatcher's choice or one backend forced (torch.nn.attention.sdpa_kernel: math, flash, efficient, cuDNN).

Everything else is the fp32 baseline, so a run's agreement and speed against the baseline are the kernel's alone.
benchmarks/attention_table.py measures the same switch per batch size x sequence length, as BioGPT's docs do.

    python tensor_rewriting/attention_experiments.py --kernel eager --model tiny-random \
        --tokenizer-dir ../shared/data/biogpt-large --data-dir ../shared/data/pubmedqa --limit 20
"""
from dataclasses import dataclass

from evaluation import Applied, DtypeOptions, Options, UsageError, main, option
from evaluation.answering import answer_logits

SDPA_BACKENDS = {"sdpa-math": "MATH", "sdpa-flash": "FLASH_ATTENTION", "sdpa-efficient": "EFFICIENT_ATTENTION",
                 "sdpa-cudnn": "CUDNN_ATTENTION"}
CUDA_ONLY = ("sdpa-efficient", "sdpa-cudnn")  # PyTorch's CPU build has the math and flash kernels only


@dataclass(frozen=True)
class AttentionOptions(DtypeOptions):
    kernel: str = option("sdpa", "eager: transformers' reference attention (matmul, softmax, matmul); sdpa: "
                                 "scaled_dot_product_attention, the dispatcher picks the backend; sdpa-math, "
                                 "sdpa-flash, sdpa-efficient, sdpa-cudnn: that backend only (the last two on CUDA).",
                         choices=["eager", "sdpa", *SDPA_BACKENDS])

    @property
    def variant(self) -> str:
        return f"{self.kernel}-{self.dtype_name}"


    def check(self, cfg, device):
        if self.kernel in CUDA_ONLY and device.type != "cuda":
            raise UsageError(f"--kernel {self.kernel} is a CUDA kernel; on a CPU use sdpa-math or sdpa-flash")


def apply(model, cfg, run) -> Applied:
    kernel = cfg.options.kernel
    if cfg.attn_implementation != "sdpa":
        raise UsageError("attention_experiments sets the attention kernel itself (--kernel); leave "
                         "--attn-implementation at its default")
    model.set_attn_implementation("eager" if kernel == "eager" else "sdpa")
    record = {"attn_implementation": model.config._attn_implementation, "sdpa_backend": SDPA_BACKENDS.get(kernel)}
    if kernel not in SDPA_BACKENDS:
        return Applied(record=record)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = getattr(SDPBackend, SDPA_BACKENDS[kernel])

    def forward(model, batch, answer_ids):
        with sdpa_kernel(backend):  # no fallback: a backend that can't take these inputs raises
            return answer_logits(model, batch, answer_ids)

    return Applied(record=record, forward=forward)


if __name__ == "__main__":
    main("tensor_rewriting", AttentionOptions, apply, description=__doc__.splitlines()[0])
