"""--attn-implementation on every script and the attention technique: eager and SDPA give the same answers on the
tiny preset within a stated logit tolerance; choices this machine can't run exit 2 in one line."""
import json

import pytest
import torch

from conftest import run_script

# float32 attention computed two ways differs by rounding only: 1e-5 on logits of scale ~1 is ~100 ulps
LOGIT_TOLERANCE = 1e-5


def logits(run_dir):
    import csv

    with open(run_dir / "per_question.csv") as f:
        return {r["pmid"]: (r["prediction"], [float(r[f"logit_{x}"]) for x in ("yes", "no", "maybe")])
                for r in csv.DictReader(f)}


@pytest.mark.e2e
def test_eager_and_sdpa_agree_through_the_shared_option_and_the_technique(base_args, tmp_path):
    out = tmp_path / "results"
    assert run_script("baseline.baseline", [*base_args, "--run-name", "sdpa"]) == 0
    assert run_script("baseline.baseline", [*base_args, "--run-name", "eager", "--attn-implementation", "eager"]) == 0
    assert run_script("tensor_rewriting.attention_experiments",
                      [*base_args, "--run-name", "math", "--kernel", "sdpa-math", "--reference", str(out / "sdpa")]) == 0
    sdpa, eager, math_ = logits(out / "sdpa"), logits(out / "eager"), logits(out / "math")
    for other in (eager, math_):
        for pmid, (prediction, values) in sdpa.items():
            assert other[pmid][0] == prediction
            assert max(abs(a - b) for a, b in zip(values, other[pmid][1])) < LOGIT_TOLERANCE
    assert json.loads((out / "eager" / "results.json").read_text())["config"]["attn_implementation"] == "eager"
    record = json.loads((out / "math" / "results.json").read_text())["technique"]
    assert record == {"attn_implementation": "sdpa", "sdpa_backend": "MATH"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
@pytest.mark.parametrize("module, argv, message", [
    ("baseline.baseline", ["--attn-implementation", "flash_attention_2"], "flash_attention_2 needs a CUDA GPU"),
    ("tensor_rewriting.attention_experiments", ["--kernel", "sdpa-cudnn"], "sdpa-cudnn is a CUDA kernel"),
    ("tensor_rewriting.attention_experiments", ["--kernel", "sdpa-efficient"], "sdpa-efficient is a CUDA kernel"),
    ("baseline.baseline", ["--attn-implementation", "flex"], "invalid choice"),
])
def test_unsupported_attention_exits_2(module, argv, message, base_args, tmp_path, capsys):
    assert run_script(module, [*base_args, *argv]) == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "results").exists()
