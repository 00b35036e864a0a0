"""Accuracy, macro-F1 (the official PubMedQA way), per-class scores and fidelity against a reference run."""
from __future__ import annotations

import math

from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from .data import LABELS

UNPARSED = "unparsed"  # a generate-mode answer without yes/no/maybe: counted as wrong


def classification_metrics(gold: list[str], pred: list[str]) -> dict:
    """accuracy and macro-F1 exactly as PubMedQA's evaluation.py computes them; per-class over yes/no/maybe."""
    p, r, f, support = precision_recall_fscore_support(gold, pred, labels=list(LABELS), zero_division=0)
    return {
        "n": len(gold),
        "accuracy": float(accuracy_score(gold, pred)),
        "macro_f1": float(f1_score(gold, pred, average="macro")),
        "unparsed": sum(x == UNPARSED for x in pred),
        "per_class": {label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                              "support": int(support[i])} for i, label in enumerate(LABELS)},
        "confusion_matrix": {"labels": list(LABELS) + [UNPARSED],
                             "matrix": confusion_matrix(gold, pred, labels=list(LABELS) + [UNPARSED]).tolist()},
    }


def softmax3(logits: list[float]) -> list[float]:
    m = max(logits)
    e = [math.exp(x - m) for x in logits]
    return [x / sum(e) for x in e]


def fidelity(reference: dict[str, dict], current: dict[str, dict]) -> dict:
    """Prediction agreement (%) and mean KL(reference || current) of the yes/no/maybe distribution.

    Both maps: PMID -> {"prediction": label, "logits": [yes, no, maybe] or None}.
    """
    common = sorted(set(reference) & set(current))
    if not common:
        return {"n_compared": 0, "agreement": None, "mean_kl": None}
    agree = sum(reference[p]["prediction"] == current[p]["prediction"] for p in common)
    kls = []
    for p in common:
        a, b = reference[p].get("logits"), current[p].get("logits")
        if a is None or b is None:
            continue
        pa, pb = softmax3(a), softmax3(b)
        kls.append(sum(x * (math.log(max(x, 1e-30)) - math.log(max(y, 1e-30))) for x, y in zip(pa, pb)))
    return {"n_compared": len(common), "agreement": 100.0 * agree / len(common),
            "mean_kl": sum(kls) / len(kls) if kls else None,
            "max_abs_logit_diff": max((max(abs(x - y) for x, y in zip(reference[p]["logits"], current[p]["logits"]))
                                      for p in common if reference[p].get("logits") and current[p].get("logits")),
                                      default=None)}
