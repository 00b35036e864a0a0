"""Speed-ups that machine drift cannot fake (issue 22 §4): --paired times an fp32-eager reference in a second
process, pass for pass with the run (A B, B A, ...), and the speed-up comes from the per-round ratios; a speed-up
from runs timed apart is labelled so and never called significant."""
import json
import time

import pytest
import torch

from conftest import run_script
from evaluation import stats
from evaluation.harness import run_passes
from evaluation.telemetry import Sampler


def test_drift_between_rounds_cancels_in_a_paired_speedup():
    """The machine halves its speed for rounds 2-3 and doubles it for round 4: both sides alike, so every ratio is 1
    and the paired interval is tight around 1; the same passes pooled apart look like anything from 0.5x to 2x."""
    ref = [10.0, 20.0, 20.0, 5.0]
    run = [10.0 * (1 + d) for d in (0.01, -0.01, 0.0, 0.005)]
    run = [r * f for r, f in zip(run, (1, 2, 2, 0.5))]
    paired = stats.paired_speedup(ref, run)
    assert paired["timing"] == "paired" and paired["n_rounds"] == 4
    assert 0.97 < paired["ci_low"] <= paired["value"] <= paired["ci_high"] < 1.03
    assert not stats.significant_speedup(paired)
    faster = stats.paired_speedup(ref, [r / 1.6 for r in run])
    assert stats.significant_speedup(faster) and faster["ci_low"] > 1.5


def test_a_speedup_timed_apart_is_never_significant():
    """Two runs of the same computation timed hours apart (48 s and 26 s passes, as this VM drifted): the bootstrap
    interval excludes 1, and it is still no finding."""
    apart = stats.speedup_ci([48.0, 48.2, 47.9], [26.4, 26.3, 26.7])
    assert apart["timing"] == "apart" and apart["ci_high"] < 1.0 and "--paired" in apart["reason"]
    assert stats.significant_speedup(apart) is False
    flat = stats.flat_summary({"speedup": apart, "significant_speedup": False})
    assert flat["speedup_timing"] == "apart"


class FakeReference:
    def __init__(self, order):
        self.order = order

    def timed_pass(self):
        self.order.append("ref")
        return 1.0


def test_rounds_alternate_which_side_runs_first():
    order = []

    def one_pass(progress=None):
        order.append("run")

    *_, ref_s, _ = run_passes(one_pass, 1, 4, 0.0, torch.device("cpu"), FakeReference(order))
    assert order[1:] == ["ref", "run", "run", "ref", "ref", "run", "run", "ref"] and ref_s == [1.0] * 4


def test_a_paused_sampler_leaves_the_other_process_out():
    with Sampler(torch.device("cpu"), interval_s=0.01) as s:
        time.sleep(0.1)
        with s.paused():
            n = len(s.samples)
            time.sleep(0.2)
            assert len(s.samples) <= n + 1  # at most the sample being taken as it paused
        time.sleep(0.1)
    assert len(s.segments) == 2 and {x["segment"] for x in s.samples} <= {0, 1}


@pytest.fixture(scope="module")
def paired_run(tokenizer_dir, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("paired")
    args = ["--model", "tiny-random", "--tokenizer-dir", tokenizer_dir, "--data-dir", data_dir, "--limit", "8",
            "--batch-size", "4", "--wandb", "disabled", "--output-dir", str(out), "--run-name", "f32", "--paired",
            "--precision", "float32"]
    assert run_script("precision_reduction.precision_experiments", args) == 0
    return json.loads((out / "f32" / "results.json").read_text())


@pytest.mark.e2e
def test_a_paired_run_compares_with_its_reference_round_by_round(paired_run, capsys):
    """float32 against the fp32-eager reference: the same computation, so every answer agrees, KL is 0, and the
    speed-up's interval comes from 3 paired rounds."""
    m = paired_run["metrics"]
    assert len(m["reference_pass_wall_s_samples"]) == len(m["pass_wall_s_samples"]) == 3
    assert m["fidelity"]["agreement"] == 100.0 and m["fidelity"]["mean_kl"] == pytest.approx(0, abs=1e-9)
    assert m["fidelity"]["reference"] == "paired fp32-eager reference"
    speed = m["comparison"]["speedup"]
    assert speed["timing"] == "paired" and speed["n_rounds"] == 3 and speed["ci_low"] is not None
    assert speed["ratios"] == pytest.approx([a / b for a, b in zip(m["reference_pass_wall_s_samples"],
                                                                   m["pass_wall_s_samples"])])
    assert paired_run["config"]["paired"] is True


@pytest.mark.parametrize("extra, message", [
    (["--reference", "x"], "--paired times its own fp32-eager reference"),
    (["--min-passes", "0"], "--paired pairs timed passes"),
])
def test_paired_refuses_what_contradicts_it(base_args, capsys, extra, message):
    assert run_script("baseline.baseline", [*base_args, "--paired", *extra]) == 2
    assert message in capsys.readouterr().err
