"""A plain PyTorch loop over the bench's batches, with nothing of the bench around it: torch and transformers only.
benchmarks/harness_overhead.py times it against the bench's own pass, in its process or run alone as

    python benchmarks/plain_loop.py '{"preset": {...BioGptConfig fields}, "seed": 0, "batches": "b.pt", "passes": 3}'

which prints the passes' seconds as a JSON list (after one untimed warm-up pass, as the bench's cold pass)."""
import json
import sys
import time

import torch
from transformers import BioGptConfig, BioGptForCausalLM


def plain_pass(model, batches, answer_ids):
    """Each (input ids, padding mask, positions, last index) batch: the causal 4D mask the bench builds, the
    decoder, the LM head's answer columns at each row's last real position."""
    with torch.inference_mode():
        for ids, padding, positions, last in batches:
            n = ids.shape[1]
            mask = torch.ones(n, n, dtype=torch.bool).tril()[None, None] & padding.bool()[:, None, None, :]
            hidden = model.biogpt(input_ids=ids, attention_mask=mask, position_ids=positions,
                                  use_cache=False).last_hidden_state
            model.output_projection(hidden[torch.arange(hidden.shape[0]), last])[:, answer_ids].float()


if __name__ == "__main__":
    spec = json.loads(sys.argv[1])
    config = BioGptConfig(**spec["preset"])
    config._attn_implementation = "sdpa"
    torch.manual_seed(spec["seed"])
    model = BioGptForCausalLM(config).eval()
    data = torch.load(spec["batches"])
    plain_pass(model, data["batches"], data["answer_ids"])
    times = []
    for _ in range(spec["passes"]):
        t0 = time.perf_counter()
        plain_pass(model, data["batches"], data["answer_ids"])
        times.append(time.perf_counter() - t0)
    print(json.dumps(times))
