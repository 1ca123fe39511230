"""A study's claims, measured: paired differences over seeds, an interval, a verdict. No Ray, no files.

`paired_interval` and `verdict` are plain functions of the paired effects; `evaluate_claim` pairs the
cells of a study (raylab/study.py, module doc: which cells pair, and why by seed) and reads each run's
curve at the claim's fraction.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats

from raylab.study import (
    ARM,
    SEED,
    Claim,
    StatisticConfig,
    StudyConfig,
    cell_view,
    relative_saving_at,
    value_at,
)


def paired_interval(effects, statistic: StatisticConfig | None = None) -> tuple[float, float, float]:
    """(mean, low, high) of the paired effects [n]: the mean with its `confidence` interval, Student t
    (mean ± t_{n-1} · sd / √n) or a percentile bootstrap of the mean. NaN bounds for fewer than 2."""
    statistic = statistic or StatisticConfig()
    d = np.asarray(effects, dtype=np.float64)
    mean = float(d.mean()) if d.size else math.nan
    if d.size < 2:
        return mean, math.nan, math.nan
    if statistic.interval == "bootstrap":
        rng = np.random.default_rng(statistic.seed)
        means = d[rng.integers(0, d.size, size=(statistic.resamples, d.size))].mean(axis=1)
        tail = (1 - statistic.confidence) / 2
        lo, hi = np.quantile(means, [tail, 1 - tail])
        return mean, float(lo), float(hi)
    half = stats.t.ppf(0.5 + statistic.confidence / 2, d.size - 1) * d.std(ddof=1) / math.sqrt(d.size)
    return mean, mean - float(half), mean + float(half)


def verdict(low: float, high: float) -> str:
    """holds (the interval lies above 0), reversed (below 0), inconclusive (it holds 0, or is unknown)."""
    if low > 0:
        return "holds"
    if high < 0:
        return "reversed"
    return "inconclusive"


def evaluate_claim(study: StudyConfig, claim: Claim, cells: list[dict]) -> list[dict]:
    """The claim's result per group of pairs (one group unless a grid key the claim does not name
    varies: then one result per value, its name suffixed with it).

    Args:
        cells: {"params": grid values, "records": metrics.jsonl lines} per cell.

    Returns:
        [{"claim", "metric", "at", "unit", "effect", "ci": [lo, hi] (None when unknown), "verdict",
        "seeds" (pairs counted), "a", "b", "pairs": [{"seed", "a", "b", "effect"}], "reason"}].
    """
    named = set(claim.a) | set(claim.b) | set(claim.where)
    arm_named = bool(named - set(study.keys))  # a config key an arm sets: the claim picks arms
    free = [k for k in study.keys if k not in named and k != SEED and not (k == ARM and arm_named)]
    sides: dict[str, dict[tuple, list[dict]]] = {"a": {}, "b": {}}
    for cell in cells:
        view = cell_view(study, cell["params"])
        for side, sel in (("a", claim.a), ("b", claim.b)):
            if all(view.get(k) == v for k, v in {**sel, **claim.where}.items()):
                key = tuple(cell["params"][k] for k in free) + (cell["params"][SEED],)
                sides[side].setdefault(key, []).append(cell)
    groups: dict[tuple, list[tuple]] = {}
    order = [list(next(k.values for k in study.grid if k.key == name)) for name in [*free, SEED]]
    in_grid_order = lambda key: [o.index(v) for o, v in zip(order, key)]  # noqa: E731
    for key in sorted(set(sides["a"]) & set(sides["b"]), key=in_grid_order):
        for side in "ab":
            if len(sides[side][key]) > 1:
                arms = sorted(str(c["params"].get(ARM)) for c in sides[side][key])
                raise ValueError(f"claim {claim.name!r}: {side} matches {len(arms)} cells of one seed "
                                 f"(arms {', '.join(arms)}); name the arm: {side}: {{arm: ...}}")
        groups.setdefault(key[:-1], []).append((key[-1], sides["a"][key][0], sides["b"][key][0]))
    if not groups:
        return [_result(claim, claim.name, [], "no cells of a and b share a seed", study.statistic)]
    out = []
    for group, pairs in groups.items():
        label = ", ".join(f"{k}={v}" for k, v in zip(free, group))
        out.append(_group_result(study, claim, f"{claim.name} [{label}]" if label else claim.name, pairs))
    return out


def _group_result(study: StudyConfig, claim: Claim, name: str, pairs: list[tuple]) -> dict:
    rows, missing = [], []
    for seed, cell_a, cell_b in pairs:
        row = _pair(claim, seed, cell_a["records"], cell_b["records"])
        (rows if math.isfinite(row["effect"]) else missing).append(row)
    reason = ""
    if missing:
        reason = (f"seed(s) {', '.join(str(r['seed']) for r in missing)} left out: a run did not reach "
                  + at_text({"at": claim.at, "unit": claim.unit})
                  + (" or A never reached B's level" if claim.measure == "relative_saving" else ""))
    result = _result(claim, name, rows, reason, study.statistic)
    if missing and result["verdict"] == "holds":  # what was left out might have gone against it
        result["verdict"] = "inconclusive"
    return result


def _pair(claim: Claim, seed: Any, records_a: list[dict], records_b: list[dict]) -> dict:
    at_b = claim.at_b or claim.at
    a = value_at(records_a, claim.metric, claim.at, claim.unit)
    b = value_at(records_b, claim.metric, at_b, claim.unit)
    if claim.measure == "relative_saving":
        effect = relative_saving_at(records_a, records_b, claim.metric, at_b, claim.unit)
    else:
        effect = a - (claim.reaches or 1.0) * b
    return {"seed": seed, "a": a, "b": b, "effect": effect}


def _result(claim: Claim, name: str, rows: list[dict], reason: str, statistic: StatisticConfig) -> dict:
    effect, lo, hi = paired_interval([r["effect"] for r in rows], statistic)
    if len(rows) < 2:
        reason = "; ".join(s for s in (reason, f"{len(rows)} pair(s): an interval needs at least 2") if s)
    known = math.isfinite(lo) and math.isfinite(hi)
    return {"claim": name, "metric": claim.metric, "at": claim.at, "unit": claim.unit,
            "measure": claim.measure, "reaches": claim.reaches, "effect": effect,
            "ci": [lo, hi] if known else None, "verdict": verdict(lo, hi) if known else "inconclusive",
            "seeds": len(rows), "a": claim.a, "b": claim.b, "pairs": rows, "reason": reason}


def at_text(result: dict) -> str:
    """Where a claim is read, as the tables show it: "5.0% labelled" (labelled_fraction: frames for
    ASL, videos for AL-STAL) or "4.0% clicks"."""
    return f"{result['at']:.1%} {'labelled' if result['unit'] == 'frames' else result['unit']}"


def format_claims(results: list[dict]) -> str:
    """The claims table `raylab study` prints."""
    head = f"{'claim':<44} {'metric':<14} {'at':>14} {'effect':>9} {'95% interval':>20} {'seeds':>5}  verdict"
    lines = [head, "-" * len(head)]
    for r in results:
        ci = "-" if r["ci"] is None else f"[{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}]"
        at = at_text(r)
        effect = "-" if not math.isfinite(r["effect"]) else f"{r['effect']:+.4f}"
        lines.append(f"{r['claim'][:44]:<44} {r['metric']:<14} {at:>14} {effect:>9} {ci:>20} "
                     f"{r['seeds']:>5}  {r['verdict']}" + (f" ({r['reason']})" if r["reason"] else ""))
    return "\n".join(lines)
