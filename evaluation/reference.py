"""An earlier run to compare with (--reference): read and checked whole before any model is loaded, so a wrong or
broken reference costs a second, not a whole evaluation."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from .config import UsageError
from .results import read_per_question


@dataclass(frozen=True)
class Reference:
    path: Path                  # the run directory
    results: dict               # its results.json
    rows: dict[str, dict]       # PMID -> {"prediction", "gold", "logits"}, its per_question.csv

    @property
    def pass_s(self) -> list[float]:
        return self.results["metrics"].get("pass_wall_s_samples") or []

    @property
    def device_name(self) -> str | None:
        return (self.results.get("environment") or {}).get("device_name")


def model_differences(ours: dict, theirs: dict) -> list[str]:
    """What tells two model identities (runner's results["model"]["identity"]) apart, readably; [] for the same."""
    out = [f"{k} {theirs.get(k)!r} vs {ours.get(k)!r}" for k in ("name", "weights", "seed")
           if ours.get(k) != theirs.get(k)]
    arch_ours, arch_theirs = ours.get("architecture") or {}, theirs.get("architecture") or {}
    out += [f"{k} {arch_theirs.get(k)} vs {arch_ours.get(k)}" for k in arch_ours if arch_ours[k] != arch_theirs.get(k)]
    return out


def load_reference(path: str | None, pmids: list[str], identity: dict, prompt_form: str) -> Reference | None:
    """The --reference run, refused in one line unless it is whole (results.json and per_question.csv readable),
    answered exactly these questions with the same prompt form, and ran the same model (name, weights, preset seed,
    architecture; its dtype may differ: that is what a reference is compared for)."""
    if path is None:
        return None
    where = Path(path)
    where = where.parent if where.name == "results.json" else where
    if not (where / "results.json").is_file() or not (where / "per_question.csv").is_file():
        raise UsageError(f"--reference {path}: expected an earlier run directory with results.json and "
                         "per_question.csv")
    try:
        results = json.loads((where / "results.json").read_text())
        rows = read_per_question(where)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, csv.Error) as e:
        raise UsageError(f"--reference {path}: unreadable, truncated or not a run's files ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'no detail'})")
    whole = all(r["prediction"] for r in rows.values()) and len({r["logits"] is None for r in rows.values()}) == 1
    if not isinstance(results, dict) or not isinstance(results.get("metrics"), dict) or not rows or not whole:
        raise UsageError(f"--reference {path}: results.json or per_question.csv is incomplete (truncated?)")
    theirs = set(rows)
    if theirs != set(pmids):
        raise UsageError(f"--reference {path} answered {len(theirs)} questions, this run {len(pmids)} "
                         f"({len(theirs & set(pmids))} in common): run both over the same --limit and data")
    recorded = (results.get("model") or {}).get("identity")
    if not recorded:
        raise UsageError(f"--reference {path} records no model identity (made by an older version of the bench): "
                         "run the reference again")
    differences = model_differences(identity, recorded)
    if differences:
        raise UsageError(f"--reference {path} is a run of another model ({'; '.join(differences)}): compare runs "
                         "of the same model")
    their_form = (results.get("run") or {}).get("prompt_form")
    if their_form != prompt_form:
        raise UsageError(f"--reference {path} used the {their_form} prompt, this run the {prompt_form} one: pass the "
                         "same --prompt to both")
    return Reference(where, results, rows)
