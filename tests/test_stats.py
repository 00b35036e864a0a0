"""evaluation.stats against hand-built prediction sets and values computed independently (by hand, by sklearn, by
the normal approximation), so that each test fails when the statistics go wrong."""
import math
import random

import numpy as np
import pytest
from sklearn.metrics import f1_score

from evaluation import stats as S

LABELS = ["yes", "no", "maybe"]


def flip(label: str) -> str:
    """A wrong answer for `label`."""
    return LABELS[(LABELS.index(label) + 1) % 3]


def run_with(gold: list[str], right: list[bool]) -> list[str]:
    return [g if ok else flip(g) for g, ok in zip(gold, right)]


def mcnemar_case(both: int, b: int, c: int, neither: int):
    """(gold, run, reference) with exactly b right->wrong and c wrong->right questions."""
    gold = [LABELS[i % 3] for i in range(both + b + c + neither)]
    ref_ok = [True] * both + [True] * b + [False] * c + [False] * neither
    run_ok = [True] * both + [False] * b + [True] * c + [False] * neither
    return gold, run_with(gold, run_ok), run_with(gold, ref_ok)


def noisy_run(n: int, accuracy: float, seed: int, labels=LABELS):
    rng = random.Random(seed)
    gold = [rng.choice(LABELS) for _ in range(n)]
    pred = [g if rng.random() < accuracy else rng.choice(labels) for g in gold]
    return gold, pred


# ------------------------------------------------------------------------------------------- McNemar

def test_mcnemar_exact_p_by_hand():
    gold, run, ref = mcnemar_case(both=40, b=1, c=6, neither=10)
    t = S.paired_test(run, ref, gold)
    assert (t["right_to_wrong"], t["wrong_to_right"], t["n"], t["basis"]) == (1, 6, 57, "correctness")
    assert t["mcnemar_p"] == pytest.approx(2 * 8 / 128)  # 2 * P(X <= 1 | n=7, 1/2) = 0.125
    # b=2, c=8: 2 * (1 + 10 + 45) / 1024
    gold, run, ref = mcnemar_case(both=5, b=2, c=8, neither=5)
    assert S.paired_test(run, ref, gold)["mcnemar_p"] == pytest.approx(112 / 1024)


def test_all_agree_is_p_one_and_no_flips():
    gold, run, ref = mcnemar_case(both=30, b=0, c=0, neither=20)
    t = S.paired_test(run, ref, gold)
    assert (t["right_to_wrong"], t["wrong_to_right"], t["changed"], t["mcnemar_p"]) == (0, 0, 0, 1.0)
    assert not S.distinguishable(t)


def test_changed_counts_wrong_to_other_wrong():
    gold = ["yes"] * 10
    ref = ["no"] * 10
    run = ["maybe"] * 3 + ["no"] * 7  # three answers changed, none of them right either time
    t = S.paired_test(run, ref, gold)
    assert (t["right_to_wrong"], t["wrong_to_right"], t["changed"]) == (0, 0, 3)
    assert t["changed_ci_low"] < 0.3 < t["changed_ci_high"]


def test_agreement_basis_reduces_to_count_of_changes():
    ref = [LABELS[i % 3] for i in range(100)]
    for k, p in ((5, 2 * 0.5 ** 5), (6, 2 * 0.5 ** 6)):
        run = [flip(x) for x in ref[:k]] + ref[k:]
        t = S.paired_test(run, ref)
        assert t["basis"] == "agreement_with_reference"
        assert (t["right_to_wrong"], t["wrong_to_right"], t["changed"]) == (k, 0, k)
        assert t["mcnemar_p"] == pytest.approx(p)
        assert S.distinguishable(t) is (k >= 6)  # 5 changes: p = 0.0625, not different at 5%; 6: 0.03125
    same = S.paired_test(ref, ref)
    assert (same["changed"], same["mcnemar_p"], same["changed_ci_low"]) == (0, 1.0, 0.0)
    # Clopper-Pearson upper bound for 0 of 100: 1 - 0.025 ** (1/100)
    assert same["changed_ci_high"] == pytest.approx(1 - 0.025 ** (1 / 100))


def test_agreement_basis_between_two_variants_is_a_real_mcnemar():
    ref = [LABELS[i % 3] for i in range(60)]
    a = [flip(x) for x in ref[:1]] + ref[1:]  # A changes 1 answer
    b = [flip(x) for x in ref[:7]] + ref[7:]  # B changes 7 answers, including A's
    t = S.paired_test(b, a, gold=ref, basis="agreement_with_reference")
    assert (t["right_to_wrong"], t["wrong_to_right"]) == (6, 0)
    assert t["mcnemar_p"] == pytest.approx(2 * 0.5 ** 6)


def test_paired_test_rejects_misaligned_runs():
    with pytest.raises(ValueError):
        S.paired_test(["yes"] * 3, ["yes"] * 4, ["yes"] * 3)


# ------------------------------------------------------------------------------------------ bootstrap

def test_macro_f1_vectorised_matches_sklearn_on_every_resample():
    gold, pred = noisy_run(60, 0.5, seed=3, labels=LABELS + ["unparsed"])
    codes, k = S._pair_codes(gold, pred)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(codes), size=(100, len(codes)))
    ours = S._macro_f1_from_codes(codes[idx], k)
    g, p = np.array(gold), np.array(pred)
    theirs = [f1_score(g[i], p[i], average="macro") for i in idx]
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12)
    # a resample where a label vanishes from gold and pred alike: it must drop out of the mean, as in sklearn
    (g2, p2), k2 = S._encode(["a", "a", "b", "c", "c"], ["a", "b", "b", "c", "a"])
    ours2 = S._macro_f1_from_codes((g2 * k2 + p2)[None, [0, 3]], k2)[0]  # gold [a, c], pred [a, c]: no "b"
    assert ours2 == f1_score(["a", "c"], ["a", "c"], average="macro") == 1.0


def test_accuracy_interval_matches_normal_approximation():
    gold = [LABELS[i % 3] for i in range(500)]
    pred = run_with(gold, [i % 10 < 7 for i in range(500)])  # accuracy exactly 0.7
    acc = S.score_intervals(gold, pred)["accuracy"]
    half = 1.959964 * math.sqrt(0.7 * 0.3 / 500)  # 0.0402, computed without any bootstrap
    assert acc["value"] == pytest.approx(0.7)
    assert acc["ci_low"] == pytest.approx(0.7 - half, abs=0.008)
    assert acc["ci_high"] == pytest.approx(0.7 + half, abs=0.008)
    assert set(acc) == {"value", "ci_low", "ci_high", "confidence", "method", "resamples", "seed", "n", "reason"}
    assert (acc["confidence"], acc["resamples"], acc["seed"], acc["n"]) == (0.95, 2000, 0, 500)


def test_intervals_contain_estimate_and_shrink_with_n():
    gold, pred = noisy_run(500, 0.6, seed=1)
    small = S.score_intervals(gold, pred)
    big = S.score_intervals(gold * 4, pred * 4)  # the same rates over four times the questions
    for name in ("accuracy", "macro_f1"):
        assert small[name]["ci_low"] < small[name]["value"] < small[name]["ci_high"]
        assert big[name]["value"] == pytest.approx(small[name]["value"])
        w_small = small[name]["ci_high"] - small[name]["ci_low"]
        w_big = big[name]["ci_high"] - big[name]["ci_low"]
        assert w_big == pytest.approx(w_small / 2, rel=0.2)  # width ~ 1/sqrt(n)


def test_bootstrap_is_seeded():
    gold, pred = noisy_run(300, 0.6, seed=2)
    a, b, c = (S.score_intervals(gold, pred, seed=s)["macro_f1"] for s in (7, 7, 8))
    assert a == b
    assert (a["ci_low"], a["ci_high"]) != (c["ci_low"], c["ci_high"])


def test_two_thousand_resamples_are_one_vectorised_call(monkeypatch):
    """What makes 2,000 resamples cheap is counted, not timed: each statistic is called once on a [2000, n] array of
    all resamples (a Python call per resample would be 2,000 calls), and once on the questions for the estimate."""
    gold, pred = noisy_run(500, 0.7, seed=4, labels=LABELS + ["unparsed"])
    statistics = ("_accuracy_from_codes", "_macro_f1_from_codes")
    calls = []
    for name in statistics:
        real = getattr(S, name)
        monkeypatch.setattr(S, name, lambda codes, k, real=real, name=name:
                            calls.append((name, codes.shape)) or real(codes, k))
    S.score_intervals(gold, pred, resamples=2000)
    for name in statistics:
        assert sorted(shape for called, shape in calls if called == name) == [(500,), (2000, 500)], calls


def test_too_few_questions_give_no_interval_but_a_reason():
    acc = S.score_intervals(["yes"], ["no"])["accuracy"]
    assert (acc["value"], acc["ci_low"], acc["ci_high"]) == (0.0, None, None) and acc["reason"]


# --------------------------------------------------------------------------------- paired difference

def test_paired_difference_matches_normal_approximation_and_is_narrower_than_unpaired():
    rng = random.Random(5)
    gold = [rng.choice(LABELS) for _ in range(500)]
    ref_ok = [rng.random() < 0.7 for _ in gold]
    run_ok = [ok if rng.random() < 0.9 else not ok for ok in ref_ok]  # agrees with the reference on ~90%
    run, ref = run_with(gold, run_ok), run_with(gold, ref_ok)
    diff = S.paired_differences(gold, run, ref)["accuracy_diff"]
    d = np.array(run_ok, float) - np.array(ref_ok, float)
    half = 1.959964 * d.std(ddof=1) / math.sqrt(len(d))
    assert diff["value"] == pytest.approx(d.mean())
    assert diff["ci_low"] == pytest.approx(d.mean() - half, abs=0.006)
    assert diff["ci_high"] == pytest.approx(d.mean() + half, abs=0.006)
    unpaired = S.score_intervals(gold, run)["accuracy"]
    assert diff["ci_high"] - diff["ci_low"] < 0.6 * (unpaired["ci_high"] - unpaired["ci_low"])


def test_distinguishable_needs_the_test_and_the_interval():
    gold, run, ref = mcnemar_case(both=300, b=5, c=40, neither=155)
    cmp = S.comparison_stats(run, ref, gold)
    assert cmp["paired"]["mcnemar_p"] < 1e-6
    assert cmp["accuracy_diff"]["ci_low"] > 0
    assert cmp["distinguishable"] is True
    straddling = dict(cmp["accuracy_diff"], ci_low=-0.01)
    assert S.distinguishable(cmp["paired"], straddling) is False
    gold, run, ref = mcnemar_case(both=300, b=1, c=6, neither=193)
    assert S.comparison_stats(run, ref, gold)["distinguishable"] is False  # p = 0.125: no ranking


# --------------------------------------------------------------------------------------------- timing

def test_median_ci_by_hand():
    x = [9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0, 5.0, 10.0]  # n=10, sorted 1..10
    m = S.median_ci(x)
    # [x(2), x(9)] covers with 1 - 2 * P(B <= 1 | 10, 1/2) = 1 - 2 * 11/1024; [x(3), x(8)] only 1 - 2 * 56/1024
    assert (m["value"], m["ci_low"], m["ci_high"]) == (5.5, 2.0, 9.0)
    assert m["coverage"] == pytest.approx(1 - 22 / 1024)
    six = S.median_ci([3.0, 1.0, 2.0, 6.0, 5.0, 4.0])
    assert (six["ci_low"], six["ci_high"], six["coverage"]) == (1.0, 6.0, pytest.approx(1 - 2 / 64))


def test_median_ci_too_few_passes_says_why():
    m = S.median_ci([1.0, 1.1, 0.9, 1.2, 1.05])  # [min, max] covers only 1 - 2/32 = 93.75%
    assert (m["ci_low"], m["ci_high"], m["coverage"]) == (None, None, None)
    assert "93.8%" in m["reason"] and m["value"] == 1.05


def test_median_ci_rank_rule_matches_scipy_for_many_n():
    for n in range(6, 40):
        x = list(range(1, n + 1))
        m = S.median_ci(x)
        rank = S._covering_rank(n, 0.95)
        assert (m["ci_low"], m["ci_high"]) == (rank, n + 1 - rank)
        assert m["coverage"] >= 0.95


def test_speedup_interval_excludes_one_when_clearly_faster_but_only_paired_passes_make_it_a_finding():
    base = [10.0, 10.1, 9.9, 10.05, 9.95]
    run = [5.0, 5.05, 4.95, 5.02, 4.98]
    ci = S.speedup_ci(run, base)
    assert ci["value"] == pytest.approx(2.0)
    assert 1.9 < ci["ci_low"] < 2.0 < ci["ci_high"] < 2.1
    assert S.significant_speedup(ci) is False  # timed apart: the machine's drift between the runs is unknown
    assert S.significant_speedup(S.paired_speedup(base, run)) is True
    assert S.significant_speedup(S.paired_speedup(run, base)) is True  # clearly slower is also a real difference


def test_speedup_interval_includes_one_when_passes_overlap():
    base = [10.0, 11.0, 9.0, 10.5, 9.5]
    run = [10.2, 9.1, 10.8, 9.7, 10.4]
    ci = S.speedup_ci(run, base)
    assert ci["ci_low"] < 1.0 < ci["ci_high"]
    assert S.significant_speedup(ci) is False


def test_speedup_needs_three_passes_each():
    ci = S.speedup_ci([1.0, 1.0], [2.0, 2.0, 2.0])
    assert ci["value"] == 2.0 and ci["ci_low"] is None and "at least 3" in ci["reason"]
    assert S.significant_speedup(ci) is False
    assert S.significant_speedup(None) is False


# ------------------------------------------------------------------------------------------ summaries

def test_flat_summary_names():
    gold, run, ref = mcnemar_case(both=30, b=1, c=6, neither=13)
    st = S.run_stats(gold, run, [1.0, 1.1, 0.9, 1.0, 1.2, 0.95])
    st |= S.comparison_stats(run, ref, gold, run_pass_s=[1.0, 1.1, 0.9], ref_pass_s=[2.0, 2.1, 1.9],
                             timed_in_rounds=True)
    flat = S.flat_summary(st)
    assert flat["mcnemar_p"] == pytest.approx(0.125)
    assert (flat["right_to_wrong"], flat["wrong_to_right"], flat["paired_basis"]) == (1, 6, "correctness")
    assert flat["accuracy_ci_low"] == st["accuracy"]["ci_low"] and "accuracy" not in flat
    assert flat["pass_s_median_coverage"] == pytest.approx(1 - 2 / 64)
    assert flat["speedup"] == pytest.approx(2.0, rel=0.01) and flat["significant_speedup"] is True
    assert flat["speedup_timing"] == "paired"
    assert flat["distinguishable"] is False
    assert all(not isinstance(v, dict) for v in flat.values())
    assert {"accuracy_diff", "accuracy_diff_ci_low", "accuracy_diff_ci_high", "macro_f1_ci_high",
            "speedup_ci_low", "changed"} <= set(flat)


def test_align_pairs_by_pmid_not_position():
    run = {"3": {"prediction": "no", "gold": "no"}, "1": {"prediction": "yes", "gold": "yes"},
           "9": {"prediction": "maybe", "gold": "yes"}}
    ref = {"1": {"prediction": "no", "gold": "yes"}, "3": {"prediction": "no", "gold": "no"}}
    assert S.align(run, ref) == (["1", "3"], ["yes", "no"], ["yes", "no"], ["no", "no"])
    no_gold = {k: {"prediction": v["prediction"]} for k, v in ref.items()}
    assert S.align(run, no_gold)[1] is None
    with pytest.raises(ValueError):
        S.align(run, {"1": {"prediction": "no", "gold": "maybe"}})
