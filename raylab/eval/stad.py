"""Spatio-temporal action detection metrics: frame-mAP and video-mAP as the ACT detector evaluates them.

The ``act`` protocol reproduces the evaluation of the ACT detector (Kalogeiton et al., ICCV 2017), the
standard for UCF101-24 and J-HMDB: detections ranked by score, greedy matching in which a matched
ground truth is used up, +1 pixel box IoU, AP as the trapezoidal area under the raw PR curve, and a
per-video per-class tube NMS at 0.3 before video-AP. The ``voc`` protocol changes three things: box IoU
without +1, VOC all-point interpolated AP, no tube NMS. docs/evaluation.md has the details and the
JSON format read by ``raylab eval stad``.
"""

from __future__ import annotations

import logging

import numpy as np

from raylab.eval.boxes import (
    TubeSet,
    iou2d,
    iou2d_pairs,
    iou3dt,
    iou3dt_pairs,
    nms3dt,
    nms3dt_grouped,
    pr_to_ap_act,
    voc_ap,
    within_group_rank,
)
from raylab.eval.io import read_document
from raylab.eval.masks import mask_iou, masks_to_detections, pixel_iou_accuracy
from raylab.eval.stad_json import StadFormatError, parse_stad

__all__ = [
    "StadFormatError", "evaluate_stad", "evaluate_stad_file", "frame_ap", "video_ap", "iou2d", "iou3dt",
    "nms3dt", "pr_to_ap_act", "voc_ap", "mask_iou", "pixel_iou_accuracy", "masks_to_detections",
]

log = logging.getLogger(__name__)

PROTOCOLS = ("act", "voc")
TUBE_NMS_OVERLAP = 0.3  # ACT's videoAP applies nms3dt(tubes, 0.3) per video and class


def greedy_match(group: np.ndarray, iou: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy matching of ranked detections to ground truths, each ground truth used at most once.

    Detection i (in ranking order) is compared with the still unmatched ground truths of its group;
    the one of highest IoU (the first on ties) is matched when that IoU >= threshold, as in ACT.

    Args:
        group: [N] ground-truth group of each detection (-1: none), detections in ranking order.
        iou: [N, G] IoU with the group's ground truths; -inf where the group has fewer than G.
        threshold: IoU needed for a match.

    Returns:
        [N] bool, True for true positives.
    """
    tp = np.zeros(group.size, bool)
    has = np.flatnonzero(group >= 0)
    if has.size == 0:
        return tp
    _, rank = within_group_rank(group[has])
    by_rank = has[np.argsort(rank, kind="stable")]
    cut = np.searchsorted(np.sort(rank), np.arange(rank.max() + 2))
    available = np.ones((int(group.max()) + 1, iou.shape[1]), bool)
    for k in range(int(rank.max()) + 1):
        # the rank-k detection of every group: all groups advance together
        sel = by_rank[cut[k] : cut[k + 1]]
        g = group[sel]
        cand = np.where(available[g], iou[sel], -np.inf)
        best = np.argmax(cand, axis=1)
        ok = cand[np.arange(sel.size), best] >= threshold
        tp[sel[ok]] = True
        available[g[ok], best[ok]] = False
    return tp


def _class_aps(labels_sorted, tp, n_pos, protocol) -> np.ndarray:
    """AP per class from true-positive flags in ranking order (sorted by class); nan without GT."""
    n_classes = n_pos.size
    bounds = np.searchsorted(labels_sorted, np.arange(n_classes + 1))
    aps = np.full(n_classes, np.nan)
    for c in np.flatnonzero(n_pos > 0):
        hits = tp[bounds[c] : bounds[c + 1]]
        tp_cum = np.cumsum(hits)
        precision = tp_cum / np.arange(1, hits.size + 1)
        recall = tp_cum / n_pos[c]
        aps[c] = pr_to_ap_act(precision, recall) if protocol == "act" else voc_ap(precision, recall)
    return aps


def _group_ids(gt_keys: np.ndarray, det_keys: np.ndarray):
    """Group ground truths by key; returns (gt order by group, group starts, sizes, det group or -1)."""
    order = np.argsort(gt_keys, kind="stable")
    uniq, starts, sizes = np.unique(gt_keys[order], return_index=True, return_counts=True)
    if uniq.size == 0:
        return order, starts, sizes, np.full(det_keys.size, -1, np.int64)
    pos = np.minimum(np.searchsorted(uniq, det_keys), uniq.size - 1)
    return order, starts, sizes, np.where(uniq[pos] == det_keys, pos, -1)


def _pairs(det_group, starts, sizes, gt_order):
    """(detection, ground truth, column) for every ground truth in each detection's group."""
    d = np.flatnonzero(det_group >= 0)
    n = sizes[det_group[d]]
    det = np.repeat(d, n)
    col = np.arange(det.size) - np.repeat(np.cumsum(n) - n, n)
    gt = gt_order[starts[det_group[det]] + col]
    return det, gt, col


def frame_ap(gt: dict, dets: dict, n_classes: int, thresholds=(0.5,), protocol: str = "act") -> dict:
    """Frame-AP per class (ACT's frameAP).

    A detection counts against the ground-truth boxes of its class in its frame (boxes of every tube
    of that class there); one in a frame without such a box is a false positive. The number of positives
    of a class is its number of ground-truth boxes over all videos.

    Args:
        gt: "video" [N] int, "frame" [N] int, "label" [N] int, "box" [N, 4] float.
        dets: the same keys plus "score" [M] float.
        n_classes: number of classes C.
        thresholds: IoU thresholds.
        protocol: "act" (+1 IoU, trapezoidal AP) or "voc" (no +1, all-point interpolated AP).

    Returns:
        {threshold: [C] AP, nan for classes without ground truth}.
    """
    _check_protocol(protocol)
    plus_one = protocol == "act"
    stride = int(max(np.max(gt["frame"], initial=0), np.max(dets["frame"], initial=0))) + 1

    def keys(t):
        return (np.asarray(t["video"], np.int64) * stride + t["frame"]) * n_classes + t["label"]

    labels = np.asarray(dets["label"], np.int64)
    rank = np.lexsort((-np.asarray(dets["score"], np.float64), labels))  # class, then score desc, stable
    gt_order, starts, sizes, group = _group_ids(keys(gt), keys(dets)[rank])
    width = int(sizes.max(initial=0))
    iou = np.full((rank.size, max(width, 1)), -np.inf)
    det, gti, col = _pairs(group, starts, sizes, gt_order)
    gt_box = np.asarray(gt["box"], np.float64).reshape(-1, 4)
    det_box = np.asarray(dets["box"], np.float64).reshape(-1, 4)[rank]
    iou[det, col] = iou2d_pairs(det_box[det], gt_box[gti], plus_one)
    n_pos = np.bincount(np.asarray(gt["label"], np.int64), minlength=n_classes)
    return {
        t: _class_aps(labels[rank], greedy_match(group, iou, t), n_pos, protocol) for t in thresholds
    }


def video_ap(gt: dict, dets: dict, n_classes: int, thresholds=(0.5,), protocol: str = "act") -> dict:
    """Video-AP per class (ACT's videoAP).

    Under "act", each video's tubes of each class first go through tube NMS (iou3dt > 0.3 removed).
    A detected tube counts against the ground-truth tubes of its class in its video, by iou3dt.

    Args:
        gt: "video" [K] int, "label" [K] int, "tubes" list of K arrays [n, 5] (frame, x1, y1, x2, y2).
        dets: the same keys plus "score" [L] float.
        n_classes, thresholds, protocol: as in frame_ap.

    Returns:
        {threshold: [C] AP, nan for classes without ground truth}.
    """
    _check_protocol(protocol)
    plus_one = protocol == "act"
    n_gt = len(gt["tubes"])
    tubes = TubeSet.from_arrays(list(gt["tubes"]) + list(dets["tubes"]))
    d_video = np.asarray(dets["video"], np.int64)
    d_label = np.asarray(dets["label"], np.int64)
    d_score = np.asarray(dets["score"], np.float64)
    if protocol == "act":
        # NMS within (video, class); then rank by class, score, and ACT's list order (video, keep order)
        kept = nms3dt_grouped(
            _slice(tubes, n_gt), d_score, d_video * n_classes + d_label, TUBE_NMS_OVERLAP, plus_one
        )
        rank = kept[np.lexsort((np.arange(kept.size), -d_score[kept], d_label[kept]))]
    else:
        rank = np.lexsort((-d_score, d_label))
    gt_keys = np.asarray(gt["video"], np.int64) * n_classes + np.asarray(gt["label"], np.int64)
    gt_order, starts, sizes, group = _group_ids(gt_keys, (d_video * n_classes + d_label)[rank])
    iou = np.full((rank.size, max(int(sizes.max(initial=0)), 1)), -np.inf)
    det, gti, col = _pairs(group, starts, sizes, gt_order)
    iou[det, col] = iou3dt_pairs(tubes, n_gt + rank[det], gti, plus_one)
    n_pos = np.bincount(np.asarray(gt["label"], np.int64), minlength=n_classes)
    return {
        t: _class_aps(d_label[rank], greedy_match(group, iou, t), n_pos, protocol) for t in thresholds
    }


def _slice(tubes: TubeSet, first: int) -> TubeSet:
    """The tubes from index `first` on, sharing the flat box arrays."""
    return TubeSet(tubes.start[first:], tubes.end[first:], tubes.offset[first:], tubes.boxes, tubes.present)


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")


def expand_thresholds(spec) -> dict[str, list[float]]:
    """{output key: IoU thresholds averaged}; "0.5:0.95" is 0.5, 0.55, ..., 0.95 (step 0.05)."""
    out = {}
    for item in spec:
        if isinstance(item, str) and ":" in item:
            lo, hi = (float(x) for x in item.split(":"))
            n = int(round((hi - lo) / 0.05))
            out[item] = [round(lo + 0.05 * i, 10) for i in range(n + 1)]
        else:
            out[f"{float(item):g}"] = [float(item)]
    return out


def _summarise(aps: dict, spec: dict, has_gt: np.ndarray) -> tuple[dict, np.ndarray]:
    """(mAP per output key over classes with GT, [C, keys] per-class AP averaged per key)."""
    per_class = np.stack([np.mean([aps[t] for t in ts], axis=0) for ts in spec.values()], axis=1)
    means = {}
    for j, key in enumerate(spec):
        means[key] = float(np.mean(per_class[has_gt, j])) if has_gt.any() else None
    return means, per_class


def evaluate_stad(
    data: dict,
    protocol: str = "act",
    frame_thresholds=(0.5,),
    video_thresholds=(0.2, 0.5, 0.75, "0.5:0.95"),
    source: str = "<data>",
) -> dict:
    """Frame-mAP and video-mAP of the detections in `data` (the JSON of docs/evaluation.md).

    Args:
        data: {"labels", "videos", "frame_detections", "tube_detections"}, frames 1-based.
        protocol: "act" or "voc".
        frame_thresholds, video_thresholds: IoU thresholds; a string "lo:hi" averages lo, lo+0.05, ..., hi.
        source: name used in error messages (the file path).

    Returns:
        {"protocol", "frame_map": {key: mAP}, "video_map": {key: mAP}, "per_class": {label: {...}},
        "classes_without_gt": [label, ...]}; APs are fractions in [0, 1]. Classes without ground truth
        are left out of the means (their APs are null) and listed in "classes_without_gt".
    """
    _check_protocol(protocol)
    parsed = parse_stad(data, source)
    labels = parsed["labels"]
    n_classes = len(labels)
    f_spec, v_spec = expand_thresholds(frame_thresholds), expand_thresholds(video_thresholds)
    f_ts = sorted({t for ts in f_spec.values() for t in ts})
    v_ts = sorted({t for ts in v_spec.values() for t in ts})
    f_aps = frame_ap(parsed["gt_boxes"], parsed["frame_dets"], n_classes, f_ts, protocol)
    v_aps = video_ap(parsed["gt_tubes"], parsed["tube_dets"], n_classes, v_ts, protocol)
    n_boxes = np.bincount(parsed["gt_boxes"]["label"], minlength=n_classes)
    n_tubes = np.bincount(np.asarray(parsed["gt_tubes"]["label"], np.int64), minlength=n_classes)
    has_gt = n_tubes > 0
    frame_map, f_class = _summarise(f_aps, f_spec, has_gt)
    video_map, v_class = _summarise(v_aps, v_spec, has_gt)
    missing = [labels[c] for c in np.flatnonzero(~has_gt)]
    if missing:
        log.warning("%d class(es) without ground truth left out of the means: %s", len(missing), missing)

    def ap_dict(row, spec):
        return {k: (None if np.isnan(v) else float(v)) for k, v in zip(spec, row)}

    per_class = {
        name: {
            "n_gt_boxes": int(n_boxes[c]),
            "n_gt_tubes": int(n_tubes[c]),
            "frame_ap": ap_dict(f_class[c], f_spec),
            "video_ap": ap_dict(v_class[c], v_spec),
        }
        for c, name in enumerate(labels)
    }
    return {
        "protocol": protocol,
        "frame_map": frame_map,
        "video_map": video_map,
        "per_class": per_class,
        "classes_without_gt": missing,
    }


def evaluate_stad_file(path, protocol: str = "act", **kwargs) -> dict:
    """evaluate_stad on a JSON file; errors name the file and the offending entry."""
    data = read_document(path, StadFormatError)
    return evaluate_stad(data, protocol=protocol, source=str(path), **kwargs)
