"""Which differences are real: bootstrap intervals for accuracy and macro-F1, paired tests against a reference run,
and intervals for pass times and speed-ups, so that no two variants are ranked on noise.

Everything here takes plain lists (labels per question, in the same question order for every run; pass times in
seconds) and returns plain dicts of floats, so results.json, the report and wandb can carry them unchanged.

Shapes (stable; a value that can't be computed is None with a "reason"):
  interval:    {"value", "ci_low", "ci_high", "confidence", "method", "resamples", "seed", "n", "reason"}
  paired test: {"basis", "n", "right_to_wrong", "wrong_to_right", "changed", "changed_ci_low", "changed_ci_high",
                "mcnemar_p"}
  median CI:   {"value", "ci_low", "ci_high", "confidence", "coverage", "method", "n", "reason"}
  speed-up:    {"value", "ci_low", "ci_high", "confidence", "method", "resamples", "seed", "n_run", "n_baseline",
                "reason"}
"""
from __future__ import annotations

import numpy as np
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import proportion_confint

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0
# The percentile bootstrap, not scipy's default BCa: BCa's jackknife step has nothing to work with when every
# resample gives the same value (a run that reproduces its reference exactly: a difference of 0 on every resample),
# and returns NaN with a warning exactly where the answer is most clear-cut. At n = 500 the two barely differ.
METHOD = "percentile"
BASES = ("correctness", "agreement_with_reference")


# ------------------------------------------------------------------------------------------- label encoding

def _encode(*label_lists: list[str]) -> tuple[list[np.ndarray], int]:
    """Integer codes over the union of labels in all lists (yes/no/maybe and 'unparsed' alike), and their count."""
    lengths = {len(x) for x in label_lists}
    if len(lengths) != 1:
        raise ValueError(f"label lists differ in length: {sorted(lengths)} (the same questions, in the same order)")
    labels = sorted(set().union(*map(set, label_lists)))
    index = {label: i for i, label in enumerate(labels)}
    return [np.array([index[x] for x in lst], dtype=np.int64) for lst in label_lists], len(labels)


def _pair_codes(gold: list[str], pred: list[str]) -> tuple[np.ndarray, int]:
    """One integer per question, gold * k + pred: a resample of these is a resample of (gold, pred) pairs, so a
    single-sample bootstrap (or a paired one over two runs) carries everything macro-F1 needs."""
    (g, p), k = _encode(gold, pred)
    return g * k + p, k


# ----------------------------------------------------------------------------------- vectorised statistics

def _confusions(codes: np.ndarray, k: int) -> np.ndarray:
    """[..., k, k] confusion counts (gold rows, pred columns) for every resample along the last axis at once."""
    batch = codes.reshape(-1, codes.shape[-1])
    offsets = (np.arange(batch.shape[0]) * k * k)[:, None]
    counts = np.bincount((batch + offsets).ravel(), minlength=batch.shape[0] * k * k)
    return counts.reshape(codes.shape[:-1] + (k, k))


def _macro_f1_from_codes(codes: np.ndarray, k: int) -> np.ndarray:
    """sklearn's f1_score(gold, pred, average="macro") for each resample, without a Python loop over resamples.

    Same definition as PubMedQA's evaluation.py (sklearn, default labels): the mean of per-label F1 over the
    labels present in gold or pred *of that resample*; F1 = 2TP / (2TP + FP + FN), which is 0 for a present label
    never predicted correctly (sklearn's zero_division result). tests/test_stats.py checks this against sklearn.
    """
    c = _confusions(codes, k)
    tp = np.diagonal(c, axis1=-2, axis2=-1)
    gold_n, pred_n = c.sum(axis=-1), c.sum(axis=-2)
    present = (gold_n + pred_n) > 0
    denom = gold_n + pred_n  # = 2TP + FP + FN
    f1 = np.divide(2 * tp, denom, out=np.zeros(denom.shape, dtype=float), where=denom > 0)
    return (f1 * present).sum(axis=-1) / present.sum(axis=-1)


def _accuracy_from_codes(codes: np.ndarray, k: int) -> np.ndarray:
    return (codes // k == codes % k).mean(axis=-1)


# ----------------------------------------------------------------------------------- bootstrap intervals

def _interval(value, res, n: int, confidence: float, resamples: int, seed: int) -> dict:
    """The interval shape; res=None (too few questions to resample) leaves the bounds None with a reason."""
    return {"value": float(value), "ci_low": None if res is None else float(res.confidence_interval.low),
            "ci_high": None if res is None else float(res.confidence_interval.high), "confidence": confidence,
            "method": METHOD, "resamples": resamples, "seed": seed, "n": n,
            "reason": f"{n} question(s): a bootstrap needs at least 2" if res is None else None}


def _bootstrap(data: tuple, statistic, paired: bool, confidence: float, resamples: int, seed: int):
    """scipy's bootstrap, seeded, vectorised, percentile method; None for fewer than 2 observations (e.g. --limit 1),
    where scipy refuses."""
    if len(data[0]) < 2:
        return None
    return stats.bootstrap(data, statistic, vectorized=True, paired=paired, n_resamples=resamples,
                           confidence_level=confidence, method=METHOD, rng=np.random.default_rng(seed))


def score_intervals(gold: list[str], pred: list[str], *, confidence: float = CONFIDENCE,
                    resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """{"accuracy": interval, "macro_f1": interval}: bootstrap over questions (seeded, percentile method).

    The interval says how much the score would move on another 500 questions like these; it knows nothing of
    run-to-run noise on the same questions (a deterministic pipeline has none)."""
    codes, k = _pair_codes(gold, pred)
    out = {}
    for name, fn in (("accuracy", _accuracy_from_codes), ("macro_f1", _macro_f1_from_codes)):
        res = _bootstrap((codes,), lambda x, axis=-1: fn(x, k), False, confidence, resamples, seed)
        out[name] = _interval(fn(codes, k), res, len(codes), confidence, resamples, seed)
    return out


def paired_differences(gold: list[str], pred: list[str], ref_pred: list[str], *, confidence: float = CONFIDENCE,
                       resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """{"accuracy_diff": interval, "macro_f1_diff": interval} of run minus reference, resampling the same questions
    for both (paired): the question-to-question difficulty both runs share cancels, so the interval is much
    narrower than two independent intervals would suggest. Pass the reference's predictions as `gold` for
    random weights (then accuracy_diff = agreement - 1)."""
    (g, p, r), k = _encode(gold, pred, ref_pred)
    run_codes, ref_codes = g * k + p, g * k + r
    out = {}
    for name, fn in (("accuracy_diff", _accuracy_from_codes), ("macro_f1_diff", _macro_f1_from_codes)):
        res = _bootstrap((run_codes, ref_codes), lambda a, b, axis=-1: fn(a, k) - fn(b, k), True, confidence,
                         resamples, seed)
        out[name] = _interval(fn(run_codes, k) - fn(ref_codes, k), res, len(run_codes), confidence, resamples, seed)
    return out


# ------------------------------------------------------------------------------------------- paired test

def paired_test(pred: list[str], ref_pred: list[str], gold: list[str] | None = None, *, basis: str | None = None,
                confidence: float = CONFIDENCE) -> dict:
    """McNemar's exact test of a run against a reference run on the same questions, and the flips each way.

    basis "correctness" (gold given): right_to_wrong = questions the reference got right and the run wrong,
    wrong_to_right the reverse; mcnemar_p = statsmodels' exact McNemar (two-sided binomial test of the b + c
    discordant questions against p = 1/2).

    basis "agreement_with_reference" (gold=None; for random weights, where correctness means nothing): the
    reference's own predictions play the gold labels, so "right" means "answers as the reference does". Against
    the reference itself this table is one-sided by construction: the reference agrees with itself everywhere,
    so wrong_to_right = 0, right_to_wrong = changed answers k, and the exact McNemar p reduces to min(1, 2 * 0.5**k).
    That p does not test a meaningful null (the direction of every change is fixed); it is kept as a conservative
    threshold — "different from the reference" needs k >= 6 changed answers at 5% — so that a few near-tie flips
    (random weights give near-uniform logits, and reduced precision or nondeterministic kernels flip near ties)
    don't make a run "different". The descriptive figure is the change rate with its exact (Clopper-Pearson)
    interval, changed_ci_low/high. Between two variants A and B scored against the same reference R it is a real
    McNemar test: paired_test(pred_a, pred_b, gold=pred_r, basis="agreement_with_reference").

    changed: questions whose answer differs from the reference's (including wrong -> another wrong answer), with
    a Clopper-Pearson interval on changed / n.
    """
    basis = basis or ("correctness" if gold is not None else "agreement_with_reference")
    if basis not in BASES:
        raise ValueError(f"basis must be one of {BASES}, got {basis!r}")
    truth = gold if gold is not None else ref_pred
    if not len(pred) == len(ref_pred) == len(truth):
        raise ValueError(f"lengths differ: pred {len(pred)}, reference {len(ref_pred)}, gold {len(truth)}")
    run_ok = np.array([a == t for a, t in zip(pred, truth)])
    ref_ok = np.array([a == t for a, t in zip(ref_pred, truth)])
    b, c = int(np.sum(ref_ok & ~run_ok)), int(np.sum(~ref_ok & run_ok))
    table = [[int(np.sum(ref_ok & run_ok)), b], [c, int(np.sum(~ref_ok & ~run_ok))]]
    n = len(pred)
    changed = sum(a != r for a, r in zip(pred, ref_pred))
    low, high = proportion_confint(changed, n, alpha=1 - confidence, method="beta") if n else (None, None)
    return {"basis": basis, "n": n, "right_to_wrong": b, "wrong_to_right": c, "changed": changed,
            "changed_ci_low": None if low is None else float(low),
            "changed_ci_high": None if high is None else float(high),
            "mcnemar_p": float(mcnemar(table, exact=True).pvalue) if n else None}


def distinguishable(test: dict, diff: dict | None = None, alpha: float = 1 - CONFIDENCE) -> bool:
    """May these two runs be ranked? Only when McNemar rejects at `alpha` and, if the paired difference interval
    (e.g. paired_differences(...)["accuracy_diff"]) is given, it excludes 0 too. Both must agree: at the edge the
    exact test and the bootstrap can disagree, and then the honest answer is "not shown to differ"."""
    if test.get("mcnemar_p") is None or not test["mcnemar_p"] < alpha:
        return False
    if diff is not None and (diff.get("ci_low") is None or diff["ci_low"] <= 0.0 <= diff["ci_high"]):
        return False
    return True


# ------------------------------------------------------------------------------------------------- timing

def _covering_rank(n: int, confidence: float) -> int | None:
    """Largest l such that [x(l), x(n+1-l)] covers the median with probability >= confidence for any continuous
    distribution: P(l <= B <= n-l), B ~ Binomial(n, 1/2). None when even [min, max] falls short."""
    best = None
    for rank in range(1, n // 2 + 1):
        if 1 - 2 * stats.binom.cdf(rank - 1, n, 0.5) >= confidence:
            best = rank
    return best


def median_ci(samples: list[float], confidence: float = CONFIDENCE) -> dict:
    """Distribution-free interval for the median pass time from order statistics (scipy.stats.quantile_test).

    With few passes the interval can only be a pair of observed passes, so its coverage is not exactly
    `confidence`: "coverage" is the actual guaranteed probability (binomial), at least `confidence`. Below 6 passes
    no order-statistic interval reaches 95% (n=5: [min, max] covers 93.75%): ci_low/ci_high are None with a
    reason, rather than a narrower interval that claims more than it has."""
    x = np.asarray(samples, dtype=float)
    n = len(x)
    out = {"value": float(np.median(x)) if n else None, "ci_low": None, "ci_high": None, "confidence": confidence,
           "coverage": None, "method": "order_statistic", "n": n, "reason": None}
    rank = _covering_rank(n, confidence)
    if rank is None:
        widest = 1 - 2 * 0.5 ** n if n else 0.0
        out["reason"] = (f"{n} pass(es): even [min, max] covers the median with only {widest:.1%} "
                         f"< {confidence:.0%}; run more timed passes (--min-passes)")
        return out
    ci = stats.quantile_test(x, q=float(np.median(x)), p=0.5).confidence_interval(confidence)
    out.update(ci_low=float(ci.low), ci_high=float(ci.high),
               coverage=float(1 - 2 * stats.binom.cdf(rank - 1, n, 0.5)))
    return out


MIN_SPEEDUP_PASSES = 3


def speedup_ci(run_pass_s: list[float], baseline_pass_s: list[float], *, confidence: float = CONFIDENCE,
               resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """Speed-up = median(baseline pass time) / median(run pass time) (> 1: the run is faster), with a percentile
    bootstrap interval resampling each run's passes independently (they are separate processes, nothing pairs
    pass i of one with pass i of the other).

    With a handful of passes a bootstrap median can only take observed values, so the interval is crude and tends
    to be too narrow; fewer than 3 passes on either side gives None with a reason. The two runs were timed apart:
    the interval knows nothing of the machine's drift between them (up to 2x on a shared VM), so such a speed-up
    is never called significant (significant_speedup); paired_speedup is the one that can be."""
    run, base = np.asarray(run_pass_s, dtype=float), np.asarray(baseline_pass_s, dtype=float)
    out = {"value": None, "ci_low": None, "ci_high": None, "confidence": confidence, "method": METHOD,
           "timing": "apart", "resamples": resamples, "seed": seed, "n_run": len(run), "n_baseline": len(base),
           "reason": "timed apart from its reference: the machine's drift between the runs is not measured, so "
                     "no significance (time it with --paired)"}
    if len(run) and len(base):
        out["value"] = float(np.median(base) / np.median(run))
    if min(len(run), len(base)) < MIN_SPEEDUP_PASSES:
        out["reason"] += (f"; {len(run)} run and {len(base)} baseline timed pass(es): at least {MIN_SPEEDUP_PASSES} "
                          f"each are needed for an interval (--min-passes)")
        return out
    res = _bootstrap((base, run), lambda b, r, axis=-1: np.median(b, axis=axis) / np.median(r, axis=axis), False,
                     confidence, resamples, seed)
    out.update(ci_low=float(res.confidence_interval.low), ci_high=float(res.confidence_interval.high))
    return out


def paired_speedup(ref_s: list[float], run_s: list[float], *, confidence: float = CONFIDENCE) -> dict:
    """Speed-up from rounds timed together: round i timed the reference's pass ref_s[i] next to the run's run_s[i]
    (A B, then B A, ...), so a drift of the machine's speed between rounds cancels in each ratio r_i = ref / run.
    The speed-up is their geometric mean, with a Student-t interval on the log ratios (n - 1 degrees of freedom):
    the textbook paired analysis of ratios. Needs 2 rounds for an interval; 3 give a wide but honest one."""
    ratios = np.asarray(ref_s, dtype=float) / np.asarray(run_s, dtype=float)
    out = {"value": float(np.exp(np.log(ratios).mean())) if len(ratios) else None, "ci_low": None, "ci_high": None,
           "confidence": confidence, "method": "paired_log_t", "timing": "paired", "n_rounds": len(ratios),
           "ratios": [float(r) for r in ratios], "reason": None}
    if len(ratios) < 2:
        out["reason"] = f"{len(ratios)} paired round(s): at least 2 are needed for an interval (--min-passes)"
        return out
    logs = np.log(ratios)
    half = stats.t.ppf(0.5 + confidence / 2, len(logs) - 1) * logs.std(ddof=1) / np.sqrt(len(logs))
    out.update(ci_low=float(np.exp(logs.mean() - half)), ci_high=float(np.exp(logs.mean() + half)))
    return out


def significant_speedup(ci: dict | None) -> bool:
    """True only when the speed-up was timed paired with its reference (a speed-up from runs timed apart carries
    the machine's drift between them: never significant) and its interval lies wholly above or below 1.0."""
    if not ci or ci.get("timing") != "paired" or ci.get("ci_low") is None or ci.get("ci_high") is None:
        return False
    return not (ci["ci_low"] <= 1.0 <= ci["ci_high"])


# ------------------------------------------------------------------------------------------ bundles + wandb

def align(run: dict[str, dict], ref: dict[str, dict]) -> tuple[list[str], list[str] | None, list[str], list[str]]:
    """(pmids, gold, pred, ref_pred) over the PMIDs both runs answered, in sorted PMID order, from two
    PMID -> {"prediction", "gold" (optional)} maps such as results.read_per_question gives. Paired statistics are
    only meaningful question by question, so runs are matched by PMID, never by row position. gold is None when
    either map lacks it; a PMID with two different gold labels means the runs read different data: an error."""
    pmids = sorted(set(run) & set(ref))
    pred, ref_pred = [run[p]["prediction"] for p in pmids], [ref[p]["prediction"] for p in pmids]
    golds = [(run[p].get("gold"), ref[p].get("gold")) for p in pmids]
    if any(a is None or b is None for a, b in golds):
        return pmids, None, pred, ref_pred
    bad = [p for p, (a, b) in zip(pmids, golds) if a != b]
    if bad:
        raise ValueError(f"{len(bad)} PMID(s) carry different gold labels in the two runs, e.g. {bad[0]}")
    return pmids, [a for a, _ in golds], pred, ref_pred


def run_stats(gold: list[str], pred: list[str], pass_s: list[float] | None = None, *,
              confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """One run on its own: {"accuracy", "macro_f1", "pass_s_median"} (the last only when pass times are given)."""
    out = score_intervals(gold, pred, confidence=confidence, resamples=resamples, seed=seed)
    if pass_s is not None:
        out["pass_s_median"] = median_ci(pass_s, confidence)
    return out


def comparison_stats(pred: list[str], ref_pred: list[str], gold: list[str] | None = None, *,
                     run_pass_s: list[float] | None = None, ref_pass_s: list[float] | None = None,
                     timed_in_rounds: bool = False, confidence: float = CONFIDENCE, resamples: int = RESAMPLES,
                     seed: int = SEED) -> dict:
    """A run against a reference run on the same questions (same order): {"paired", "accuracy_diff",
    "macro_f1_diff", "distinguishable"} and, with both runs' pass times, {"speedup", "significant_speedup"}.
    gold=None: agreement with the reference is the basis (random weights); see paired_test. timed_in_rounds: the
    pass times were taken in alternating rounds, item i of each list in round i (paired_speedup); else the runs
    were timed apart (speedup_ci, never significant)."""
    test = paired_test(pred, ref_pred, gold, confidence=confidence)
    truth = gold if gold is not None else ref_pred
    out = {"paired": test, **paired_differences(truth, pred, ref_pred, confidence=confidence,
                                                resamples=resamples, seed=seed)}
    out["distinguishable"] = distinguishable(test, out["accuracy_diff"], 1 - confidence)
    if run_pass_s is not None and ref_pass_s is not None:
        out["speedup"] = (paired_speedup(ref_pass_s, run_pass_s, confidence=confidence) if timed_in_rounds else
                          speedup_ci(run_pass_s, ref_pass_s, confidence=confidence, resamples=resamples, seed=seed))
        out["significant_speedup"] = significant_speedup(out["speedup"])
    return out


def flat_summary(stats_dict: dict) -> dict:
    """Flat scalar names for a wandb summary / report columns from run_stats and/or comparison_stats output:
    accuracy_ci_low, accuracy_ci_high, macro_f1_ci_low, ..., pass_s_median_ci_low, pass_s_median_coverage,
    mcnemar_p, right_to_wrong, wrong_to_right, changed, paired_basis, accuracy_diff, accuracy_diff_ci_low, ...,
    speedup, speedup_ci_low, speedup_ci_high, distinguishable, significant_speedup. Point values of the run's own
    scores (accuracy, macro_f1) are left out: the metrics already carry them under those names."""
    out = {}
    for name, item in stats_dict.items():
        if name == "paired":
            out.update({k: item[k] for k in ("mcnemar_p", "right_to_wrong", "wrong_to_right", "changed",
                                             "changed_ci_low", "changed_ci_high")})
            out["paired_basis"] = item["basis"]
        elif isinstance(item, dict):
            if name not in ("accuracy", "macro_f1"):
                out[name] = item.get("value")
            out[f"{name}_ci_low"], out[f"{name}_ci_high"] = item.get("ci_low"), item.get("ci_high")
            if "coverage" in item:
                out[f"{name}_coverage"] = item["coverage"]
            if "timing" in item:  # paired (timed in alternating rounds) or apart
                out[f"{name}_timing"] = item["timing"]
        else:
            out[name] = item
    return out
