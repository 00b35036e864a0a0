"""Pruning: unstructured, structured, block or 2:4 sparsity of BioGPT's decoder Linear layers, optional recovery.

2:4 runs on sparse kernels only in bfloat16 or float16 on a CUDA GPU (--dtype); elsewhere its zeros run dense.

    python pruning/pruning.py --strategy unstructured --sparsity 0.5 --reference results/<baseline run>
    python pruning/pruning.py --strategy structured --sparsity 0.3 --heads-fraction 0.2 --save-dir pruned/
    python pruning/pruning.py --strategy 2:4 --dtype bfloat16 --finetune-steps 200
    python pruning/pruning.py --model tiny-random --tokenizer-dir ../shared/data/biogpt-large \
        --data-dir ../shared/data/pubmedqa --limit 20 --strategy block --sparsity 0.3 --block-size 32
"""
from dataclasses import dataclass
from pathlib import Path

from evaluation import Applied, DtypeOptions, UsageError, load_finetuning_data, main, option
from evaluation.finetune import finetune
from pruning import sparsify

STRATEGIES = ["unstructured", "structured", "block", "2:4"]


@dataclass(frozen=True)
class PruningOptions(DtypeOptions):
    strategy: str = option("unstructured", "unstructured: L1 magnitude; structured: remove FFN neurons (and "
                                           "heads); block: zero the lowest-norm tiles; 2:4: 2 of every 4 weights "
                                           "zero (sparse kernels on a GPU).", choices=STRATEGIES)
    sparsity: float = option(0.5, "Fraction of decoder Linear weights pruned, in [0, 1); structured: the fraction "
                                  "of FFN neurons removed per layer; 2:4: always 0.5.")
    scope: str = option("global", "unstructured/block: one ranking over all decoder matrices, or the same "
                                  "sparsity per matrix.", choices=["global", "layer"])
    block_size: int = option(32, "block: the tile side.", choices=[4, 8, 16, 32, 64])
    heads_fraction: float = option(0.0, "structured: the fraction of attention heads also removed per layer.")
    finetune_steps: int = option(0, "Recovery fine-tuning steps on the PubMedQA train/dev half, mask fixed "
                                    "(0: none).")
    finetune_lr: float = option(1e-5, "Recovery fine-tuning peak learning rate.")
    finetune_batch_size: int = option(4, "Recovery fine-tuning questions per step.", choices=[1, 2, 4, 8, 16])
    save_dir: str | None = option(None, "Save the pruned model here (save_pretrained, safetensors), once the run "
                                        "has written its results.")

    def __post_init__(self):
        for name in ("sparsity", "heads_fraction"):
            if not 0 <= getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(self, name)}")
        if self.strategy == "2:4" and self.sparsity != 0.5:
            raise UsageError(f"2:4 sparsity is 0.5 by construction; got --sparsity {self.sparsity}")
        if self.heads_fraction and self.strategy != "structured":
            raise UsageError("--heads-fraction applies to --strategy structured only")
        if self.finetune_steps < 0:
            raise UsageError(f"--finetune-steps must be >= 0, got {self.finetune_steps}")

    @property
    def variant(self) -> str:
        return f"{self.strategy.replace(':', 'of')}-{self.sparsity:g}"

    def check(self, cfg, device):
        run_dir = Path(cfg.output_dir) / (cfg.run_name or "")
        if self.save_dir and cfg.run_name and Path(self.save_dir).resolve() == run_dir.resolve():
            raise UsageError(f"--save-dir {self.save_dir} is the run's results directory; pick another")



def prune(model, opts) -> dict:
    """Apply the strategy; masks stay as hooks (fine-tuning keeps them fixed) until make_permanent."""
    if opts.strategy == "unstructured":
        sparsify.prune_unstructured(model, opts.sparsity, opts.scope)
    elif opts.strategy == "block":
        sparsify.prune_block(model, opts.sparsity, opts.block_size, opts.scope)
    elif opts.strategy == "2:4":
        sparsify.prune_two_four(model)
    else:
        return sparsify.prune_structured(model, opts.sparsity, opts.heads_fraction)
    return {}


def recover(model, cfg, run) -> tuple[dict, list[dict]]:
    """Recovery fine-tuning on the train/dev half; the shared loop refuses any test PMID."""
    opts = cfg.options
    train, test_pmids = load_finetuning_data(cfg.data_dir)  # all 500 test PMIDs, not just the --limit ones
    dtype, on_gpu = next(model.parameters()).dtype, next(model.parameters()).is_cuda
    model.float()  # fp32 master weights: a bf16/fp16 weight cannot hold 1e-5-sized updates
    history = finetune(model, run.tokenizer, train, steps=opts.finetune_steps, test_pmids=test_pmids,
                       batch_size=opts.finetune_batch_size, lr=opts.finetune_lr, seed=cfg.seed, bf16_autocast=on_gpu,
                       prompt_ids=run.prompt_ids)
    model.to(dtype)
    return {"finetune_questions": len(train),
            "finetune_test_pmids_seen": len(test_pmids & {q.pmid for q in train})}, history


def save(model, tokenizer, directory: str):
    """The pruned model as save_pretrained writes it (safetensors), 2:4 sparse weights as their dense values."""
    model.save_pretrained(directory, state_dict={k: v.to_dense() for k, v in model.state_dict().items()})
    tokenizer.save_pretrained(directory)
    print(f"saved the pruned model in {directory}")


def apply(model, cfg, run) -> Applied:
    opts = cfg.options
    original = sparsify.weight_counts(model)
    record, history = prune(model, opts), None
    if opts.finetune_steps:
        extra, history = recover(model, cfg, run)
        record |= extra
    sparsify.make_permanent(model)
    record |= sparsify.measure_sparsity(model, original)
    record["parameters_nonzero"] = sum(int(p.count_nonzero()) for p in model.parameters())
    record["sparse_kernels"], record["sparse_kernels_reason"] = (sparsify.to_semi_structured(model)
                                                                 if opts.strategy == "2:4"
                                                                 else (False, "dense kernels: not a 2:4 run"))
    print(f"pruning: {opts.strategy} requested {opts.sparsity:.3f}, measured {record['sparsity_measured']:.4f} "
          "overall, by type " + " ".join(f"{t}={s:.3f}" for t, s in record["sparsity_by_type"].items())
          + (f"; 2:4 sparse kernels {'ON' if record['sparse_kernels'] else 'OFF'} ({record['sparse_kernels_reason']})"
             if opts.strategy == "2:4" else ""))
    return Applied(record=record | ({"finetune_history": history} if history else {}),
                   curves={"finetune": history} if history else None,
                   save=(lambda _: save(model, run.tokenizer, opts.save_dir)) if opts.save_dir else None)


if __name__ == "__main__":
    main("pruning", PruningOptions, apply, description=__doc__.splitlines()[0])
