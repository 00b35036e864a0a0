"""Interleaved CPU probe: eager vs torch.compile(inductor) variants vs int8/bf16 on the score forward.

Every variant runs the same AnswerLogits computation (tensor_rewriting.hot_path) on the same padded batches of
real PubMedQA prompts. Timing is interleaved (round r runs every variant once, in a rotated order) with
torch.set_num_threads pinned, because the CPU is shared; the ratio reported is the median over rounds of
(eager-fp32 time in that round / variant time in that round). Agreement: argmax equal to eager fp32 on every
checked question, and max |logit diff| vs eager fp32 (and vs eager bf16 for bf16 variants).

    python scripts/probe_cpu_compile.py --layers 24 --batch 4 --width 512 --rounds 5 \
        --variants eager-fp32,ind-fp32,ind-fp32-freeze,eager-bf16,ind-bf16-freeze
    ... --profile ind-fp32,eager-fp32 --layers 2     # torch.profiler tables, one forward each

List variants with --list.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time

import torch
import torch._dynamo
import torch._inductor.config

from evaluation.answering import ANSWER_PREFIX, answer_token_ids, encode_prompt, pad_batch
from evaluation.data import load_test_questions
from evaluation.modeling import load_tokenizer, random_model
from tensor_rewriting.hot_path import AnswerLogits

PRESET = "biogpt-base-random"

# name -> (weights: fp32|bf16|autocast|aoq-int8|torchao-int8, compiled?, inductor options)
FREEZE = {"freezing": True}
VARIANTS = {
    "eager-fp32": ("fp32", False, None),
    "ind-fp32": ("fp32", True, {}),
    "ind-fp32-freeze": ("fp32", True, FREEZE),
    "ind-fp32-freeze-noprepack": ("fp32", True, {**FREEZE, "cpp.weight_prepack": False}),
    "ind-fp32-freeze-cppw": ("fp32", True, {**FREEZE, "cpp_wrapper": True}),
    "ind-fp32-freeze-concat": ("fp32", True, {**FREEZE, "cpp.enable_concat_linear": True}),
    "ind-fp32-freeze-autotune": ("fp32", True, {**FREEZE, "max_autotune": True,
                                                "max_autotune_gemm_backends": "CPP,ATEN"}),
    "ind-fp32-cppw": ("fp32", True, {"cpp_wrapper": True}),
    "eager-bf16": ("bf16", False, None),
    "ind-bf16": ("bf16", True, {}),
    "ind-bf16-freeze": ("bf16", True, FREEZE),
    "ind-bf16-freeze-cppw": ("bf16", True, {**FREEZE, "cpp_wrapper": True}),
    "ind-bf16-freeze-autotune": ("bf16", True, {**FREEZE, "max_autotune": True,
                                                "max_autotune_gemm_backends": "CPP,ATEN"}),
    "eager-autocast": ("autocast", False, None),
    "ind-autocast-freeze": ("autocast", True, FREEZE),
    "eager-aoq-int8": ("aoq-int8", False, None),
    "ind-aoq-int8": ("aoq-int8", True, {}),
    "eager-torchao-int8": ("torchao-int8", False, None),
    "ind-torchao-int8-freeze": ("torchao-int8", True, FREEZE),
    "ind-torchao-int8-freeze-cppw": ("torchao-int8", True, {**FREEZE, "cpp_wrapper": True}),
    "ind-torchao-int8": ("torchao-int8", True, {}),
}


class AutocastAnswerLogits(AnswerLogits):
    def forward(self, *args):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return super().forward(*args)


def build_model(kind: str, layers: int, seed: int):
    dtype = torch.bfloat16 if kind == "bf16" else torch.float32
    model = random_model(PRESET, seed, dtype, torch.device("cpu"), num_hidden_layers=layers)
    if kind == "aoq-int8" or kind == "torchao-int8":
        from quantization.int8_layers import quantize_decoder
        quantize_decoder(model, "dynamic-int8", torch.device("cpu"),
                         cpu_backend="torch-ao" if kind == "aoq-int8" else "torchao")
    return model


def build_variant(name: str, args, answer_ids):
    kind, compiled, options = VARIANTS[name]
    model = build_model(kind, args.layers, args.seed)
    cls = AutocastAnswerLogits if kind == "autocast" else AnswerLogits
    module = cls(model, answer_ids).eval()
    if not compiled:
        return module
    # NB: torch.compile(options={"freezing": True}) is silently ignored (freezing is decided outside the
    # options patch); the inductor config has to be set while the first call compiles: see main().
    # Each variant gets its own code object: dynamo caches compiled graphs per code object and its guards do
    # not tell two same-shaped AnswerLogits modules apart, so torch.compile(module) of a second variant silently
    # reuses the first variant's compiled graph (other inductor config, other weights' constants).
    ns = {}
    exec(compile("def score(a, b, c, d):\n    return module(a, b, c, d)\n", f"<probe variant {name}>", "exec"),
         {"module": module}, ns)
    return torch.compile(ns["score"], backend="inductor", dynamic=False)


def grad_ctx(mode: str):
    return torch.inference_mode() if mode == "inference_mode" else torch.no_grad()


def batches_for(tokenizer, questions, batch: int, width: int, max_len: int):
    ids = [encode_prompt(tokenizer, q, ANSWER_PREFIX, max_len)[0][:width] for q in questions]
    bs = [pad_batch(ids[k:k + batch], range(k, min(k + batch, len(ids))), width, tokenizer.pad_token_id, False,
                    torch.device("cpu")) for k in range(0, len(ids), batch)]
    out = []
    for b in bs:  # pad a short last batch by repeating its last row (one shape per probe); keep n real rows
        n = len(b.indices)
        t = [b.input_ids, b.attention_mask, b.position_ids, b.last_index]
        if n < batch:
            t = [torch.cat([x, x[-1:].expand(batch - n, *x.shape[1:])]) for x in t]
        out.append((b.indices, n, t))
    return out


def run(fn, tensors, mode):
    with grad_ctx(mode):
        return fn(*tensors).float()


def profile(names, fns, tensors, mode, rows):
    from torch.profiler import ProfilerActivity, profile as prof
    import torch._inductor.config as ic
    for name in names:
        run(fns[name], tensors, mode)  # warm
        with prof(activities=[ProfilerActivity.CPU], record_shapes=False) as p:
            t = time.perf_counter()
            run(fns[name], tensors, mode)
            dt = time.perf_counter() - t
        print(f"\n===== profile {name}: {dt:.2f} s =====")
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=70))
    del ic


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="eager-fp32,ind-fp32,ind-fp32-freeze")
    ap.add_argument("--tokenizer-dir", default="../shared/data/biogpt-large")
    ap.add_argument("--data-dir", default="../shared/data/pubmedqa")
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--width", type=int, default=512, help="every prompt padded to this length (one shape)")
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--time-batches", type=int, default=1, help="batches timed per variant per round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--mode", choices=["inference_mode", "no_grad"], default="inference_mode")
    ap.add_argument("--no-check", action="store_true", help="skip the agreement check over all questions")
    ap.add_argument("--profile", default="", help="comma list of variants to profile (one forward each)")
    ap.add_argument("--profile-rows", type=int, default=18)
    ap.add_argument("--json", default="")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args()
    if args.list:
        for k, v in VARIANTS.items():
            print(f"{k:32s} {v}")
        return
    torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.accumulated_recompile_limit = 512
    names = args.variants.split(",")
    prof_names = [n for n in args.profile.split(",") if n]
    if prof_names:
        import torch._inductor.config as ic
        ic.cpp.enable_kernel_profile = True  # inductor's C++ kernels show up by name
    need = list(dict.fromkeys(["eager-fp32"] + names + prof_names))
    if any(VARIANTS[n][0] in ("bf16",) for n in need) and not args.no_check:
        need = list(dict.fromkeys(need + ["eager-bf16"]))

    tokenizer = load_tokenizer(PRESET, args.tokenizer_dir)
    questions = load_test_questions(args.data_dir, args.questions)
    answer_ids = torch.tensor(answer_token_ids(tokenizer))
    batches = batches_for(tokenizer, questions, args.batch, args.width, args.width)
    print(f"cpu: {cpu_name()}; torch {torch.__version__}; threads {torch.get_num_threads()}; "
          f"{args.layers} layers; {len(batches)} batches of {args.batch} x {args.width}; mode {args.mode}",
          flush=True)

    fns, compile_s = {}, {}
    for n in need:
        t = time.perf_counter()
        fns[n] = build_variant(n, args, answer_ids)
        options = VARIANTS[n][2] or {}
        with torch._inductor.config.patch(options):
            run(fns[n], batches[0][2], args.mode)  # compile (under this variant's inductor config) + first run
        compile_s[n] = time.perf_counter() - t
        if VARIANTS[n][1]:  # proof it compiled its own graph: dynamo's count of unique graphs so far
            from torch._dynamo.utils import counters
            print(f"  dynamo unique graphs so far: {counters['stats']['unique_graphs']}", flush=True)
        print(f"built {n}: {compile_s[n]:.1f} s (build + compile + 1 run)", flush=True)

    if prof_names:
        profile(prof_names, fns, batches[0][2], args.mode, args.profile_rows)

    result = {"cpu": cpu_name(), "torch": torch.__version__, "layers": args.layers, "batch": args.batch,
              "width": args.width, "mode": args.mode, "threads": args.threads, "compile_s": compile_s}
    if names and args.rounds:
        times = {n: [] for n in need}
        tb = batches[:args.time_batches]
        for r in range(args.rounds):
            order = need[r % len(need):] + need[:r % len(need)]  # rotate so no variant always runs first
            for n in order:
                t = time.perf_counter()
                for b in tb:
                    run(fns[n], b[2], args.mode)
                times[n].append(time.perf_counter() - t)
            print(f"round {r}: " + ", ".join(f"{n} {times[n][-1]:.2f}" for n in need), flush=True)
        base = times["eager-fp32"]
        table = {}
        for n in need:
            ratios = [b / t for b, t in zip(base, times[n])]
            table[n] = {"median_s": statistics.median(times[n]), "min_s": min(times[n]),
                        "speedup_vs_eager_fp32_median_of_rounds": statistics.median(ratios),
                        "speedup_vs_eager_fp32_of_mins": min(base) / min(times[n]),
                        "times": [round(x, 3) for x in times[n]]}
            if "eager-bf16" in times and n != "eager-bf16":
                rb = [b / t for b, t in zip(times["eager-bf16"], times[n])]
                table[n]["speedup_vs_eager_bf16_median_of_rounds"] = statistics.median(rb)
        result["timing"] = table
        print("\nvariant                          median_s   x eager-fp32 (median of round ratios / of mins)"
              "   x eager-bf16")
        for n, v in table.items():
            xb = v.get("speedup_vs_eager_bf16_median_of_rounds")
            print(f"{n:32s} {v['median_s']:8.2f}   {v['speedup_vs_eager_fp32_median_of_rounds']:6.2f} / "
                  f"{v['speedup_vs_eager_fp32_of_mins']:5.2f}" + (f"        {xb:5.2f}" if xb else ""))

    if not args.no_check:
        logits = {}
        for n in need:
            logits[n] = torch.cat([run(fns[n], t, args.mode)[:k] for _, k, t in batches])
        ref = logits["eager-fp32"]
        check = {}
        print("\nagreement over", len(ref), "questions")
        for n in need:
            c = {"agree_vs_eager_fp32_pct": 100.0 * (logits[n].argmax(1) == ref.argmax(1)).float().mean().item(),
                 "max_abs_diff_vs_eager_fp32": (logits[n] - ref).abs().max().item()}
            if "eager-bf16" in logits and VARIANTS[n][0] == "bf16":
                rb = logits["eager-bf16"]
                c["agree_vs_eager_bf16_pct"] = 100.0 * (logits[n].argmax(1) == rb.argmax(1)).float().mean().item()
                c["max_abs_diff_vs_eager_bf16"] = (logits[n] - rb).abs().max().item()
            check[n] = c
            print(f"{n:32s} " + ", ".join(f"{k} {v:.4g}" for k, v in c.items()))
        result["logit_scale"] = ref.abs().max().item()
        result["check"] = check
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


def cpu_name() -> str:
    import platform
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        model = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name"))
        fam = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("cpu family"))
        mod = next(line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model\t"))
        flags = next(line for line in info.splitlines() if line.startswith("flags")).split()
        isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16") if f in flags]
        return f"{model} (family {fam} model {mod}; {'/'.join(isa)}; capability {torch.backends.cpu.get_cpu_capability()})"
    except Exception:
        return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
