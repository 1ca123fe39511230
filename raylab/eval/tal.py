"""Temporal action localization metrics: mAP at tIoU thresholds, and Relative Saving (AL-STAL Eq.11).

mAP reproduces the official ActivityNet evaluation (activitynet/ActivityNet, Evaluation/eval_detection.py:
``ANETdetection`` and ``compute_average_precision_detection``; ``segment_iou`` and
``interpolated_prec_rec`` of Evaluation/utils.py) number for number: per class, predictions ranked by
``np.argsort(score)[::-1]``; each takes the first not yet matched ground truth of its class and video in
descending tIoU order when that tIoU >= threshold; VOC-2011 interpolated AP; classes from the ground
truth. Relative Saving RS = (N_B - N_A) / N_B compares the labelled amounts two methods need to reach
the same metric. docs/evaluation-tal.md has the details, the JSON format and where we differ.
"""

from __future__ import annotations

import logging
import numbers
from pathlib import Path

import numpy as np
import pandas as pd

from raylab.eval.io import read_document
from raylab.rundir import metric_value, read_metrics

__all__ = [
    "PRESETS", "TalFormatError", "evaluate_tal", "evaluate_tal_file", "parse_tal", "segment_iou",
    "interpolated_ap", "rank_predictions", "match_segments", "threshold_key", "amount_to_reach",
    "relative_saving", "relative_saving_runs",
]

log = logging.getLogger(__name__)

PRESETS = {
    # THUMOS'14 evaluations (AFSD, ActionFormer) pass this literal list
    "thumos14": (0.3, 0.4, 0.5, 0.6, 0.7),
    # the official default np.linspace(0.5, 0.95, 10), float noise kept: it decides boundary cases
    # (its 0.9 is 0.8999999999999999, so a tIoU of exactly 0.9 counts there)
    "activitynet": tuple(np.linspace(0.5, 0.95, 10).tolist()),
}
GT_KEYS = ("video", "label", "t_start", "t_end")
PRED_KEYS = GT_KEYS + ("score",)
MAX_PROBLEMS = 20  # problems listed in one error message


class TalFormatError(ValueError):
    """An evaluation document that cannot be used: says what is wrong and in which entry."""


class RelativeSavingError(ValueError):
    """Relative Saving cannot be read off the two curves (a curve never reaches the level, no run data)."""


def threshold_key(t: float) -> str:
    """The key of a threshold in results: "0.3", "0.55", "0.9" (for 0.8999999999999999)."""
    return f"{round(float(t), 6):g}"


# ---- reading and checking the document ---------------------------------------------------------------


def parse_tal(doc: dict, source: str = "<doc>") -> dict:
    """Check an evaluation document and turn it into arrays.

    Args:
        doc: {"ground_truth": [{"video", "label", "t_start", "t_end"}],
              "predictions": [{"video", "label", "t_start", "t_end", "score"}]}.
        source: name used in error messages (the file path).

    Returns:
        {"gt": {key: [N] array}, "pred": {key: [M] array}}: video and label as object arrays of str,
        times and score as float64, entries in document order.

    Raises:
        TalFormatError naming every bad entry (up to MAX_PROBLEMS) by list, index and video.
    """
    if not isinstance(doc, dict) or any(k not in doc for k in ("ground_truth", "predictions")):
        got = sorted(doc) if isinstance(doc, dict) else type(doc).__name__
        raise TalFormatError(f"{source}: expected an object with 'ground_truth' and 'predictions', got {got}")
    problems: list[str] = []
    gt = _read_entries(doc["ground_truth"], "ground_truth", GT_KEYS, problems)
    pred = _read_entries(doc["predictions"], "predictions", PRED_KEYS, problems)
    if problems:
        more = f"\n  ... and {len(problems) - MAX_PROBLEMS} more" if len(problems) > MAX_PROBLEMS else ""
        listed = "\n  ".join(problems[:MAX_PROBLEMS])
        raise TalFormatError(f"{source}: {len(problems)} problem(s):\n  {listed}{more}")
    if gt["video"].size == 0:
        raise TalFormatError(f"{source}: 'ground_truth' is empty: there is nothing to evaluate against")
    return {"gt": gt, "pred": pred}


def _read_entries(entries, name: str, keys: tuple, problems: list) -> dict:
    """Columns of one list of segments; problems found are appended to `problems`."""
    if not isinstance(entries, list):
        problems.append(f"'{name}' must be a list of objects, got {type(entries).__name__}")
        entries = []
    cols = {k: [] for k in keys}
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            problems.append(f"{name}[{i}]: expected an object with keys {list(keys)}, got {type(e).__name__}")
            e = {}
        elif any(k not in e for k in keys):
            lacking = ", ".join(repr(k) for k in keys if k not in e)
            problems.append(f"{_where(name, i, e.get('video'))}: missing {lacking}")
        for k in keys:
            cols[k].append(e.get(k))
    videos = cols["video"]
    out = {}
    for k in ("video", "label"):
        for i, v in enumerate(cols[k]):
            if v is not None and not isinstance(v, str):
                problems.append(f"{_where(name, i, videos[i])}: {k} must be a string, got {v!r}")
        out[k] = np.array([v if isinstance(v, str) else "" for v in cols[k]], dtype=object)
    for k in keys[2:]:
        out[k] = _numbers(cols[k], k, name, videos, problems)
    start, end = out["t_start"], out["t_end"]
    for i in np.flatnonzero(end < start):  # nan compares False: non-finite ones are reported above
        problems.append(f"{_where(name, i, videos[i])}: t_end {end[i]:g} < t_start {start[i]:g}")
    return out


def _numbers(values: list, key: str, name: str, videos: list, problems: list) -> np.ndarray:
    """[N] float64 of a column; non-numbers and non-finite numbers are problems (missing: already one)."""
    ok = [isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values]
    for i in np.flatnonzero(~np.array(ok, bool)):
        if values[i] is not None:
            problems.append(f"{_where(name, i, videos[i])}: {key} must be a number, got {values[i]!r}")
    x = np.array([v if good else np.nan for v, good in zip(values, ok)], dtype=np.float64)
    for i in np.flatnonzero(~np.isfinite(x) & np.array(ok, bool)):
        problems.append(f"{_where(name, i, videos[i])}: {key} is not a finite number ({x[i]})")
    return x


def _where(name: str, i: int, video) -> str:
    return f"{name}[{i}] (video {video!r})" if isinstance(video, str) else f"{name}[{i}]"


# ---- the official computation, vectorised -------------------------------------------------------------


def segment_iou(p_start, p_end, g_start, g_end) -> np.ndarray:
    """tIoU of segments, elementwise (broadcast), with the official segment_iou's arithmetic.

    intersection = max(0, min(ends) - max(starts)); union = (g_end - g_start) + (p_end - p_start) -
    intersection. Two zero-length segments give 0 / 0 = nan, as there (see match_segments).
    """
    inter = np.clip(np.minimum(p_end, g_end) - np.maximum(p_start, g_start), 0, None)
    union = (g_end - g_start) + (p_end - p_start) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return inter / union


def interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC-2011 interpolated AP, as the official interpolated_prec_rec.

    The curve is padded with (recall 0, precision 0) in front and (recall 1, precision 0) behind,
    precision is made non-increasing from the right, and AP = sum over the points where recall changes
    of (recall step) x (precision there).
    """
    p = np.concatenate([[0.0], precision, [0.0]])
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    i = np.flatnonzero(r[1:] != r[:-1]) + 1
    return float(np.sum((r[i] - r[i - 1]) * p[i]))


def rank_predictions(label: np.ndarray, score: np.ndarray, n_classes: int) -> np.ndarray:
    """Prediction indices class by class (class 0 first), each class in the official ranking.

    The official code sorts a class's scores, in document order, with ``argsort()[::-1]``: numpy's
    default (not stable) sort, reversed. The same call on the same array gives the same order, ties
    included (which tie comes first depends on numpy's sort, for the official code as for us).
    """
    by_class = np.argsort(label, kind="stable")  # each class's predictions in document order
    bounds = np.searchsorted(label[by_class], np.arange(n_classes + 1))
    parts = [by_class[bounds[c] : bounds[c + 1]] for c in range(n_classes)]
    parts = [idx[np.argsort(score[idx])[::-1]] for idx in parts]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def match_segments(p_key, p_seg, g_key, g_seg, thresholds) -> np.ndarray:
    """True positives of ranked predictions at each threshold, as compute_average_precision_detection.

    A prediction is compared with the ground truths of its key (class and video), scanned in the order
    ``tiou.argsort()[::-1]`` over them in document order; the first one not yet matched is matched
    when its tIoU >= threshold, and the scan stops (false positive) at the first tIoU < threshold. A nan
    tIoU (two zero-length segments) passes, as there. Predictions of different keys never interact, so
    all keys advance together: step k matches the k-th candidate prediction of every key.

    Args:
        p_key: [N] int key of each prediction, predictions in ranking order.
        p_seg: [N, 2] (t_start, t_end) of each prediction.
        g_key: [G] int key of each ground truth, ground truths in document order.
        g_seg: [G, 2] (t_start, t_end) of each ground truth.
        thresholds: [T] tIoU thresholds.

    Returns:
        [T, N] bool, True where the prediction is a true positive.
    """
    thr = np.asarray(thresholds, np.float64)
    tp = np.zeros((thr.size, len(p_key)), bool)
    cand, c_gt, c_iou = _candidates(p_key, p_seg, g_key, g_seg, thr.min(initial=np.inf))
    if cand.size == 0:
        return tp
    group = p_key[cand]
    by_group = np.lexsort((cand, group))  # candidates by key, each key's in ranking order
    g_sorted = group[by_group]
    first = np.flatnonzero(np.r_[True, g_sorted[1:] != g_sorted[:-1]])
    rank = np.arange(cand.size) - np.repeat(first, np.diff(np.r_[first, cand.size]))
    by_rank = by_group[np.argsort(rank, kind="stable")]
    cut = np.searchsorted(np.sort(rank), np.arange(rank.max() + 2))
    locked = np.zeros((thr.size, len(g_key) + 1), bool)
    locked[:, -1] = True  # the padding column of c_gt
    for k in range(rank.max() + 1):
        s = by_rank[cut[k] : cut[k + 1]]  # the k-th candidate of every key that has one
        gts = c_gt[s]  # [S, W] ground truths in scan order
        ok = ~(c_iou[s] < thr[:, None, None]) & ~locked[:, gts]  # [T, S, W]
        t_i, s_i = np.nonzero(ok.any(axis=2))
        w = ok.argmax(axis=2)[t_i, s_i]
        tp[t_i, cand[s[s_i]]] = True
        locked[t_i, gts[s_i, w]] = True
    return tp


def _candidates(p_key, p_seg, g_key, g_seg, min_thr: float):
    """Predictions that can match at the lowest threshold, with their ground truths in scan order.

    Returns:
        cand [C] prediction positions; gt [C, W] ground-truth indices in scan order, len(g_key) where
        padded; iou [C, W] their tIoU, -inf where padded. Only the scan prefix that passes min_thr is kept.
    """
    g_order = np.argsort(g_key, kind="stable")  # each key's ground truths in document order
    keys, starts, sizes = np.unique(g_key[g_order], return_index=True, return_counts=True)
    pos = np.searchsorted(keys, p_key).clip(max=max(keys.size - 1, 0))
    rows = np.flatnonzero(keys[pos] == p_key) if keys.size else np.zeros(0, np.int64)
    n_of = sizes[pos[rows]]
    parts = []
    for n in np.unique(n_of):
        r = rows[n_of == n]  # predictions whose key has n ground truths
        gts = g_order[starts[pos[r]][:, None] + np.arange(n)]  # [k, n] in document order
        iou = segment_iou(p_seg[r, 0, None], p_seg[r, 1, None], g_seg[gts, 0], g_seg[gts, 1])
        scan = np.argsort(iou, axis=1)[:, ::-1]  # row by row the same as tiou_arr.argsort()[::-1]
        iou, gts = np.take_along_axis(iou, scan, 1), np.take_along_axis(gts, scan, 1)
        length = (~(iou < min_thr)).sum(axis=1)  # passing entries form a prefix of the scan
        keep = length > 0
        width = int(length.max(initial=0))
        parts.append((r[keep], gts[keep, :width], iou[keep, :width]))
    width = max((p[1].shape[1] for p in parts), default=0)
    cand = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    gt = np.full((cand.size, width), len(g_key), np.int64)
    iou = np.full((cand.size, width), -np.inf)
    at = 0
    for r, g, v in parts:
        gt[at : at + r.size, : g.shape[1]] = g
        iou[at : at + r.size, : v.shape[1]] = v
        at += r.size
    return cand, gt, iou


def _class_aps(hits: np.ndarray, n_pos: int) -> np.ndarray:
    """[T] AP from [T, n] true-positive flags in ranking order, as the official code."""
    if hits.shape[1] == 0:
        return np.zeros(hits.shape[0])
    tp = np.cumsum(hits, axis=1, dtype=np.float64)
    fp = np.cumsum(~hits, axis=1, dtype=np.float64)
    recall, precision = tp / float(n_pos), tp / (tp + fp)
    return np.array([interpolated_ap(precision[t], recall[t]) for t in range(hits.shape[0])])


def _thresholds(thresholds, preset: str) -> tuple[np.ndarray, str]:
    if thresholds is None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
        return np.array(PRESETS[preset]), preset
    thr = np.asarray(thresholds, np.float64).ravel()
    if thr.size == 0 or not np.all((thr >= 0) & (thr <= 1)):
        raise ValueError(f"thresholds must be a non-empty list of numbers in [0, 1], got {thresholds!r}")
    if len({threshold_key(t) for t in thr}) < thr.size:
        raise ValueError(f"thresholds repeat a value: {thresholds!r}")
    return thr, "custom"


def evaluate_tal(doc: dict, thresholds=None, preset: str = "thumos14", source: str = "<doc>") -> dict:
    """mAP at tIoU thresholds of the predictions in `doc`, as the official ActivityNet evaluation.

    Args:
        doc: the JSON of docs/evaluation-tal.md (see parse_tal).
        thresholds: tIoU thresholds; None: those of `preset`.
        preset: "thumos14" (0.3:0.1:0.7) or "activitynet" (0.5:0.05:0.95).
        source: name used in error messages (the file path).

    Returns:
        {"preset", "thresholds": [...], "map": {"0.3": mAP, ...}, "average_map": mean of the mAPs,
        "per_class": {label: {"0.3": AP, ...}}, "ignored_labels": [...],
        "predictions_in_videos_without_gt": int}. Classes are those of the ground truth (in order of first
        appearance); predictions of other labels are ignored; predictions in videos without ground truth
        are false positives, as in the official code.
    """
    thr, preset = _thresholds(thresholds, preset)
    parsed = parse_tal(doc, source)
    gt, pred = parsed["gt"], parsed["pred"]
    classes = pd.Index(pd.unique(gt["label"]))  # the official activity_index: order of first appearance
    g_class = classes.get_indexer(gt["label"])
    p_class = classes.get_indexer(pred["label"])
    ignored = list(pd.unique(pred["label"][p_class < 0]))
    if ignored:
        log.warning("%d prediction label(s) without ground truth ignored: %s", len(ignored), ignored)
    known = np.flatnonzero(p_class >= 0)
    n_gt = gt["video"].size
    videos = pd.factorize(np.concatenate([gt["video"], pred["video"][known]]))[0]
    g_video, p_video = videos[:n_gt], videos[n_gt:]  # p_video: of the known predictions
    orphans = int(np.sum(~np.isin(p_video, g_video)))
    if orphans:
        log.warning("%d prediction(s) in videos without ground truth count as false positives", orphans)
    if np.any(gt["t_end"] == gt["t_start"]):
        log.warning("zero-length ground-truth segments: a zero-length prediction of their class and video "
                    "matches them at every threshold (the official 0/0 tIoU)")
    n_videos = int(videos.max(initial=-1)) + 1
    order = rank_predictions(p_class[known], pred["score"][known], len(classes))
    ranked = known[order]
    p_key = p_class[ranked].astype(np.int64) * n_videos + p_video[order]
    p_seg = np.stack([pred["t_start"], pred["t_end"]], axis=1)[ranked]
    g_seg = np.stack([gt["t_start"], gt["t_end"]], axis=1)
    tp = match_segments(p_key, p_seg, g_class * n_videos + g_video, g_seg, thr)
    bounds = np.searchsorted(p_class[ranked], np.arange(len(classes) + 1))
    n_pos = np.bincount(g_class, minlength=len(classes))
    ap = np.stack([_class_aps(tp[:, bounds[c] : bounds[c + 1]], n_pos[c]) for c in range(len(classes))],
                  axis=1)  # [T, C], the official self.ap
    mean_ap = ap.mean(axis=1)
    keys = [threshold_key(t) for t in thr]
    return {
        "preset": preset,
        "thresholds": [float(k) for k in keys],
        "map": {k: float(v) for k, v in zip(keys, mean_ap)},
        "average_map": float(mean_ap.mean()),
        "per_class": {name: {k: float(v) for k, v in zip(keys, ap[:, c])} for c, name in enumerate(classes)},
        "ignored_labels": ignored,
        "predictions_in_videos_without_gt": orphans,
    }


def evaluate_tal_file(path, preset: str = "thumos14", thresholds=None) -> dict:
    """evaluate_tal on a JSON file; errors name the file and the offending entry."""
    doc = read_document(path, TalFormatError)
    return evaluate_tal(doc, thresholds=thresholds, preset=preset, source=str(path))


# ---- Relative Saving (AL-STAL Eq.11) --------------------------------------------------------------------


def amount_to_reach(amounts: np.ndarray, metric: np.ndarray, level: float) -> float | None:
    """The labelled amount at which a learning curve first reaches `level`; None if it never does.

    The curve is piecewise linear between its points (amounts ascending). Reached at the first point:
    that point's amount (no extrapolation before the first point).
    """
    hit = np.flatnonzero(metric >= level)
    if hit.size == 0:
        return None
    i = int(hit[0])
    if i == 0:
        return float(amounts[0])
    x0, x1, m0, m1 = amounts[i - 1], amounts[i], metric[i - 1], metric[i]
    return float(x0 + (level - m0) * (x1 - x0) / (m1 - m0))


def _curve(points, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(amounts, metric) of a list of (amount, metric) points, sorted by amount (stable)."""
    arr = np.asarray(points, np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != 2:
        raise RelativeSavingError(
            f"curve {name}: expected a non-empty list of (labelled amount, metric) points")
    if not np.isfinite(arr).all():
        raise RelativeSavingError(f"curve {name}: amounts and metrics must be finite numbers")
    arr = arr[np.argsort(arr[:, 0], kind="stable")]
    return arr[:, 0], arr[:, 1]


def _saving(xa, ma, xb, mb, level: float) -> tuple[float | None, float | None, float | None]:
    """(N_A, N_B, RS) at one level; None where a curve does not reach it or N_B is 0."""
    n_a, n_b = amount_to_reach(xa, ma, level), amount_to_reach(xb, mb, level)
    rs = None if n_a is None or n_b is None or n_b == 0 else (n_b - n_a) / n_b
    return n_a, n_b, rs


def relative_saving(curve_a, curve_b, metric_level: float | None = None) -> dict:
    """Relative Saving of method A (proposed) over B (baseline), AL-STAL Eq.11: RS = (N_B - N_A) / N_B.

    N is the labelled amount a curve needs to first reach the metric level, linearly interpolated
    between its points. The default level is the baseline's final performance (the metric at its
    largest labelled amount), as the paper's Table 5 reports RS at the last cycle.

    Args:
        curve_a, curve_b: lists of (labelled amount, metric) points, e.g. (labelled fraction, mAP).
        metric_level: the performance both must reach; None: the baseline's final one.

    Returns:
        {"rs": fraction (0.64 = 64% fewer labels), "metric_level", "n_a", "n_b",
        "per_point": [{"amount_b", "metric_level", "n_a", "n_b", "rs"}] at each baseline point's
        performance (the paper's Fig. 6b; None where A does not reach it)}.

    Raises:
        ValueError when a curve never reaches the level (saying its best), or N_B is 0.
    """
    xa, ma = _curve(curve_a, "A")
    xb, mb = _curve(curve_b, "B")
    level = float(mb[-1]) if metric_level is None else float(metric_level)
    n_a, n_b, rs = _saving(xa, ma, xb, mb, level)
    for n, name, x, m in ((n_b, "B (baseline)", xb, mb), (n_a, "A (proposed)", xa, ma)):
        if n is None:
            best = int(np.argmax(m))
            raise RelativeSavingError(f"curve {name} never reaches metric {level:g}: its best is "
                                      f"{m[best]:g} at labelled amount {x[best]:g}")
    if rs is None:
        raise RelativeSavingError(
            f"curve B reaches metric {level:g} with no labels (N_B = 0): RS is undefined")
    per_point = []
    for x, m in zip(xb, mb):
        pa, pb, prs = _saving(xa, ma, xb, mb, float(m))
        per_point.append({"amount_b": float(x), "metric_level": float(m), "n_a": pa, "n_b": pb, "rs": prs})
    return {"rs": rs, "metric_level": level, "n_a": n_a, "n_b": n_b, "per_point": per_point}


def _line_metric(line: dict, name: str) -> float | None:
    """A metric of a metrics.jsonl line: "family@threshold" (rundir.metric_value) or a scalar family."""
    family, _, threshold = name.partition("@")
    value = (line.get("metrics") or {}).get(family)
    if isinstance(value, dict):
        return metric_value(line, name)
    if not threshold and isinstance(value, numbers.Real):
        return float(value)
    return None


def _metric_names(lines: list[dict]) -> list[str]:
    """The metric names present in metrics.jsonl lines ("map@0.5", or a scalar family's name)."""
    names = set()
    for line in lines:
        for family, values in (line.get("metrics") or {}).items():
            if isinstance(values, dict):
                names.update(f"{family}@{t}" for t in values)
            else:
                names.add(family)
    return sorted(names)


def _run_curve(run: Path, metric: str) -> list[tuple[float, float]]:
    """(labelled_fraction, metric) of each evaluated cycle of a run."""
    lines = read_metrics(run)
    if not lines:
        raise RelativeSavingError(
            f"{run}: no metrics.jsonl lines (not a run directory, or no cycle evaluated yet)")
    points = []
    for line in lines:
        value = _line_metric(line, metric)
        if value is not None and line.get("labelled_fraction") is not None:
            points.append((float(line["labelled_fraction"]), value))
    if not points:
        raise RelativeSavingError(
            f"{run}: no cycle has metric {metric!r}; metrics there: {_metric_names(lines)}")
    return points


def relative_saving_runs(run_a: Path, run_b: Path, metric: str, metric_level: float | None = None) -> dict:
    """relative_saving on two runs' learning curves: labelled_fraction vs `metric` ("map@0.5", ...).

    Args:
        run_a: run directory of the proposed method (A).
        run_b: run directory of the baseline (B).
        metric: a metric of metrics.jsonl, "family@threshold" as rundir.metric_value reads it.
        metric_level: as in relative_saving.

    Returns:
        relative_saving's dict plus "metric", "run_a", "run_b", "curve_a", "curve_b".
    """
    curve_a, curve_b = _run_curve(Path(run_a), metric), _run_curve(Path(run_b), metric)
    out = relative_saving(curve_a, curve_b, metric_level)
    out.update(metric=metric, run_a=str(run_a), run_b=str(run_b), curve_a=curve_a, curve_b=curve_b)
    return out
