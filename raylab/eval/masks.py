"""Masks for evaluation: mask IoU, the pixel-IoU accuracy protocol, and masks -> boxes and tubes.

The pixel-IoU accuracy protocol is NOT mAP: it is the fraction of ground-truth frames (or videos)
whose predicted mask overlaps the ground truth with pixel IoU >= t. See docs/evaluation.md.
"""

from __future__ import annotations

import numpy as np

from raylab.data.rle import rle_decode
from raylab.eval.boxes import iou2d_pairs


def as_mask(m, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A bool mask from an array ([H, W] or [T, H, W]) or an RLE.

    RLEs are {"counts": [...], "size": [H, W]} (COCO, uncompressed) or a counts array with `shape`;
    counts as in raylab.data.rle (column-major, first run zeros).
    """
    if isinstance(m, dict):
        h, w = m["size"]
        return rle_decode(np.asarray(m["counts"]), int(h), int(w)).astype(bool)
    if shape is not None and np.asarray(m).ndim == 1:
        return rle_decode(np.asarray(m), *shape).astype(bool)
    return np.asarray(m).astype(bool)


def _inter_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intersection and union pixel counts over the last two axes."""
    inter = np.logical_and(a, b).sum(axis=(-2, -1))
    union = np.logical_or(a, b).sum(axis=(-2, -1))
    return inter, union


def mask_iou(rle_or_mask_a, rle_or_mask_b, shape: tuple[int, int] | None = None):
    """Pixel IoU of two masks (or per frame of two [T, H, W] stacks); 0 where both are empty.

    Args:
        rle_or_mask_a, rle_or_mask_b: bool/0-1 arrays [H, W] or [T, H, W], or RLEs (see as_mask).
        shape: (H, W) when the RLEs are bare counts arrays.

    Returns:
        float, or [T] float64 for stacks.
    """
    a, b = as_mask(rle_or_mask_a, shape), as_mask(rle_or_mask_b, shape)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    inter, union = _inter_union(a, b)
    iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    return float(iou) if iou.ndim == 0 else iou


def pixel_iou_accuracy(pred_masks: dict, gt_masks: dict, thresholds=(0.5,), pred_labels=None, gt_labels=None):
    """The pixel-IoU accuracy protocol of the ASL authors' lab (an accuracy, not an mAP).

    ASL (Sec. 4) describes its evaluation as "the spatial IoU for each frame" and "the spatio-temporal
    IoU per video". Here, precisely:
      - frame accuracy@t: over every frame whose ground-truth mask is non-empty (all videos pooled), the
        fraction whose pixel IoU(predicted mask, ground-truth mask) >= t;
      - video accuracy@t: over every video with a non-empty ground truth, the fraction whose
        spatio-temporal pixel IoU >= t, that IoU being sum over all its frames of |P and G| divided by
        the sum of |P or G| (so foreground predicted on frames without ground truth lowers it).
    With labels given, a video whose predicted class differs from its ground-truth class scores IoU 0
    on all its frames.

    Args:
        pred_masks, gt_masks: {video: [T, H, W] bool/0-1 masks}; same videos, same shapes.
        thresholds: IoU thresholds t.
        pred_labels, gt_labels: optional {video: class index}.

    Returns:
        {"frame": {t: fraction}, "video": {t: fraction}}; a fraction is None when nothing is counted.
    """
    frame_ious, video_ious = [], []
    for video, gt in gt_masks.items():
        if video not in pred_masks:
            raise KeyError(f"no predicted masks for video {video!r}")
        g, p = as_mask(gt), as_mask(pred_masks[video])
        if g.shape != p.shape:
            raise ValueError(f"video {video!r}: predicted masks {p.shape} vs ground truth {g.shape}")
        inter, union = _inter_union(p, g)
        if pred_labels is not None and gt_labels is not None and pred_labels[video] != gt_labels[video]:
            inter = np.zeros_like(inter)
        gt_frames = g.any(axis=(-2, -1))
        frame_ious.append(inter[gt_frames] / union[gt_frames])
        if gt_frames.any():
            video_ious.append(inter.sum() / union.sum())
    f = np.concatenate(frame_ious) if frame_ious else np.zeros(0)
    v = np.asarray(video_ious)

    def frac(x, t):
        return float(np.mean(x >= t)) if x.size else None

    return {"frame": {t: frac(f, t) for t in thresholds}, "video": {t: frac(v, t) for t in thresholds}}


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a bool [H, W] mask (all False when it is empty); ties go to
    the component met first in row-major order."""
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())[1:]
    return labels == 1 + int(np.argmax(sizes))


def actionness(fg_prob: np.ndarray, window: int = 1) -> np.ndarray:
    """A frame's actionness: its highest foreground probability, float [T] from [T, H, W] of
    consecutive frames; with `window` w (odd), the median of that over the w frames centred on it (the
    first and last frame repeated past the ends). With w = 3 a frame is called acting when at least two
    of it and its two neighbours reach the threshold: an actor is present over runs of frames, and one
    frame's flicker does not switch it on or off."""
    peak = np.asarray(fg_prob, np.float64).reshape(len(fg_prob), -1).max(axis=1)
    if window < 1 or window % 2 == 0:
        raise ValueError(f"the actionness window must be an odd number of frames, got {window}")
    if window == 1 or len(peak) == 0:
        return peak
    from scipy.ndimage import median_filter

    return median_filter(peak, size=window, mode="nearest")


def component_boxes(fg_prob: np.ndarray, threshold: float = 0.5, scale_xy=(1.0, 1.0),
                    acting: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame, the box of the largest connected component of (fg_prob >= threshold), as
    `masks_to_detections` reports it.

    Args:
        fg_prob: float [T, H, W] foreground probabilities.
        threshold: foreground threshold; scale_xy: (original width / mask width, height / height).
        acting: bool [T], frames that may get a box (default: all).

    Returns:
        has bool [T] (the frame has a box), boxes float [T, 4] (x1, y1, x2, y2; rows without a box are
        meaningless), the mean foreground probability inside each component float [T].
    """
    fg = np.asarray(fg_prob, np.float64)
    t, h, w = fg.shape
    acting = np.ones(t, bool) if acting is None else np.asarray(acting, bool)
    mask = np.stack([largest_component(fg[i] >= threshold) if acting[i] else np.zeros((h, w), bool)
                     for i in range(t)]) if t else fg >= threshold
    cols, rows = mask.any(axis=1), mask.any(axis=2)  # [T, W], [T, H]
    sx, sy = scale_xy
    first_col, first_row = cols.argmax(axis=1), rows.argmax(axis=1)
    end_col, end_row = w - cols[:, ::-1].argmax(axis=1), h - rows[:, ::-1].argmax(axis=1)  # last + 1
    boxes = np.column_stack([first_col * sx, first_row * sy, end_col * sx, end_row * sy])
    fg_mean = (fg * mask).sum(axis=(1, 2)) / np.maximum(mask.sum(axis=(1, 2)), 1)
    return cols.any(axis=1), boxes.reshape(t, 4), fg_mean


def masks_to_detections(
    video: str,
    frames: np.ndarray,
    fg_prob: np.ndarray,
    class_probs: np.ndarray,
    scale_xy=(1.0, 1.0),
    threshold: float = 0.5,
    top_k: int = 1,
    min_actionness: float = 0.0,
    actionness_window: int = 1,
    tube_min_actionness: float | None = None,
) -> tuple[list[dict], list[dict]]:
    """Turn a video's predicted foreground masks into frame detections and tubes for evaluate_stad.

    Per frame, the box is the tight box of the largest connected component of (fg_prob >= threshold)
    (stray blobs elsewhere do not stretch it), scaled to the original resolution,
    [c_first * sx, r_first * sy, (c_last + 1) * sx, (r_last + 1) * sy]: the convention in which targets
    are rendered from boxes (pixels whose centre lies in [x1, x2), data/targets.py), so a detector
    trained on a dataset's boxes gives boxes in that dataset's own numbers, whichever convention its
    annotations use. A frame whose `actionness` is below `min_actionness` gets no frame detection. The
    frame score for class c is class_prob[c] times the mean foreground probability inside the component.
    One tube per video for each of the top_k classes (by mean class probability), over the frames that
    have a box and whose actionness reaches `tube_min_actionness` (default: `min_actionness`); its score
    is the mean of those frames' scores. Two gates, because the metrics differ: frame-mAP ranks every
    frame detection by its score, so a low-scored detection on a frame without an actor costs less than
    a dropped actor frame, while a tube's frames are its temporal extent, with no score per frame.

    Args:
        video: video name.
        frames: [T] 0-based frame indices of the rows of fg_prob.
        fg_prob: [T, H, W] foreground probabilities.
        class_probs: [C] video-level or [T, C] per-frame class probabilities.
        scale_xy: (sx, sy), original width / mask width and original height / mask height.
        threshold: foreground threshold.
        top_k: number of classes that get detections.
        min_actionness: frames below it get no frame detection (`predict.calibrate_detector` sets it on
            training frames).
        actionness_window: frames whose median actionness is compared with the gates (`actionness`).
        tube_min_actionness: frames below it are left out of the tubes (None: `min_actionness`).

    Returns:
        (frame_detections, tube_detections) as in the evaluation JSON, frames 1-based.
    """
    fg = np.asarray(fg_prob, np.float64)  # [T, H, W]
    frames = np.asarray(frames, np.int64)
    t = len(fg)
    probs = np.broadcast_to(np.asarray(class_probs, np.float64), (t, np.shape(class_probs)[-1]))  # [T, C]
    tube_min_actionness = min_actionness if tube_min_actionness is None else tube_min_actionness
    score = actionness(fg, actionness_window)
    has, box, fg_mean = component_boxes(fg, threshold, scale_xy,
                                        score >= min(min_actionness, tube_min_actionness))
    boxes = [[float(v) for v in b] for b in box]
    classes = np.argsort(-probs.mean(axis=0), kind="stable")[:top_k]
    frame_dets, tube_dets = [], []
    in_frames = np.flatnonzero(has & (score >= min_actionness))
    in_tube = np.flatnonzero(has & (score >= tube_min_actionness))
    for c in classes:
        scores = probs[:, c] * fg_mean
        frame_dets += [{"video": video, "frame": int(frames[i]) + 1, "label": int(c),
                        "score": float(scores[i]), "box": boxes[i]} for i in in_frames]
        if in_tube.size:
            tube = [[int(frames[i]) + 1, *boxes[i]] for i in in_tube]
            tube_dets.append({"video": video, "label": int(c), "score": float(scores[in_tube].mean()),
                              "boxes": tube})
    return frame_dets, tube_dets


def calibrate_actionness(scores: np.ndarray, has_actor: np.ndarray) -> float:
    """The actionness threshold that best separates frames with an actor from frames without, on
    labelled (training) frames: the one maximising balanced accuracy (Youden's J), placed halfway
    between two neighbouring scores. 0.0 (detect on every frame) when either kind of frame is missing.

    Args:
        scores: float [N] `actionness` of labelled frames; has_actor: bool [N] their labels.
    """
    scores, has_actor = np.asarray(scores, np.float64), np.asarray(has_actor, bool)
    n_pos, n_neg = int(has_actor.sum()), int((~has_actor).sum())
    if n_pos == 0 or n_neg == 0:
        return 0.0
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], has_actor[order]
    # threshold between s[k-1] and s[k]: frames k.. are called actors
    below_neg = np.concatenate([[0], np.cumsum(~y)])  # negatives below each cut
    below_pos = np.concatenate([[0], np.cumsum(y)])
    j = below_neg / n_neg + (n_pos - below_pos) / n_pos  # TNR + TPR at each cut k = 0..N
    distinct = np.concatenate([[True], s[1:] > s[:-1], [True]])  # cuts that fall between different scores
    k = int(np.flatnonzero(distinct)[np.argmax(j[distinct])])
    if k == 0:
        return 0.0
    return float(np.nextafter(s[-1], np.inf)) if k == len(s) else float((s[k - 1] + s[k]) / 2)


def best_target_ious(has: np.ndarray, boxes: np.ndarray, targets: list) -> np.ndarray:
    """float [T]: the IoU (ACT's +1 pixel) of each frame's box (`component_boxes`) with the target box
    it overlaps most; 0 where the frame has no box or no target.

    Args:
        has: bool [T]; boxes: float [T, 4]; targets: T arrays [K, 4] of (x1, y1, x2, y2) (K may be 0).
    """
    out = np.zeros(len(has))
    for i, target in enumerate(targets):
        target = np.asarray(target, np.float64).reshape(-1, 4)
        if has[i] and len(target):
            out[i] = iou2d_pairs(np.broadcast_to(boxes[i], target.shape), target).max()
    return out


def component_box_ious(fg_prob: np.ndarray, targets: list, scale_xy=(1.0, 1.0),
                       thresholds=(0.5,)) -> np.ndarray:
    """float [T, len(thresholds)]: `best_target_ious` of each frame's `component_boxes` box at each
    threshold.

    Args:
        fg_prob: float [T, H, W]; targets: T arrays [K, 4] of (x1, y1, x2, y2), at least one box each.
    """
    return np.stack([best_target_ious(*component_boxes(fg_prob, t, scale_xy)[:2], targets)
                     for t in thresholds], axis=1).reshape(len(fg_prob), len(thresholds))


MASK_THRESHOLDS = tuple(float(t) for t in np.round(np.arange(0.1, 0.91, 0.05), 2))  # calibration grid


def best_mask_threshold(box_ious: np.ndarray, thresholds=MASK_THRESHOLDS) -> float:
    """The foreground threshold whose boxes fit labelled (training) frames best: the highest mean box
    IoU, ties going to the threshold nearest 0.5. 0.5 when there is no labelled actor.

    Args:
        box_ious: float [N, len(thresholds)], the IoU of each labelled actor frame's component box at
            each threshold (0 where no box); thresholds: the candidates, in the order of the columns.
    """
    box_ious = np.asarray(box_ious, np.float64).reshape(-1, len(thresholds))
    if not len(box_ious):
        return 0.5
    mean = box_ious.mean(axis=0)
    best = np.flatnonzero(mean >= mean.max() - 1e-12)
    return float(min((thresholds[i] for i in best), key=lambda t: (abs(t - 0.5), t)))
