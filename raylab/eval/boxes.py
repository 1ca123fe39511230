"""Box and tube geometry, tube NMS and AP integration for spatio-temporal detection metrics.

Everything here is plain numpy over arrays and follows the ACT detector's evaluation (Kalogeiton et
al., ICCV 2017) where a choice exists; see docs/evaluation.md for the exact conventions.

Boxes are [x1, y1, x2, y2]. With ``plus_one=True`` (ACT, UCF101-24 / J-HMDB) coordinates are inclusive
pixel indices, so a box's width is x2 - x1 + 1; with ``plus_one=False`` (VOC-style continuous
coordinates) it is x2 - x1. A tube is a float array [n, 5] of rows (frame, x1, y1, x2, y2).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Upper bound on the number of (pair, frame) rows materialised at once when comparing tubes.
_PAIR_FRAME_CHUNK = 1 << 22


def iou2d_pairs(a: np.ndarray, b: np.ndarray, plus_one: bool = True) -> np.ndarray:
    """Elementwise IoU of a[i] and b[i]; a, b: [N, 4] -> [N]."""
    one = 1.0 if plus_one else 0.0
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + one
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + one
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    area_a = (a[..., 2] - a[..., 0] + one) * (a[..., 3] - a[..., 1] + one)
    area_b = (b[..., 2] - b[..., 0] + one) * (b[..., 3] - b[..., 1] + one)
    union = area_a + area_b - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def iou2d(boxes_a: np.ndarray, boxes_b: np.ndarray, plus_one: bool = True) -> np.ndarray:
    """IoU between every box of boxes_a and every box of boxes_b.

    Args:
        boxes_a: [N, 4] or [4].
        boxes_b: [M, 4] or [4].
        plus_one: ACT's inclusive-pixel convention (width = x2 - x1 + 1).

    Returns:
        [N, M]; a 1-D input drops its axis (ACT's ``iou2d(gt_boxes, box)`` is ``iou2d(a, b)[:, ]`` -> [N]).
    """
    a = np.asarray(boxes_a, dtype=np.float64)
    b = np.asarray(boxes_b, dtype=np.float64)
    out = iou2d_pairs(np.atleast_2d(a)[:, None, :], np.atleast_2d(b)[None, :, :], plus_one)
    if b.ndim == 1:
        out = out[:, 0]
    if a.ndim == 1:
        out = out[0]
    return out


@dataclass
class TubeSet:
    """Many tubes in flat arrays, densified over each tube's own frame span.

    Tube k covers frames start[k]..end[k] (its first and last box); its boxes live in
    boxes[offset[k] : offset[k] + end[k] - start[k] + 1], with present[...] False on frames the tube
    skips. Only tubes of the same video are ever compared, so frames need no video key.
    """

    start: np.ndarray  # [K] int64, first frame
    end: np.ndarray  # [K] int64, last frame (inclusive)
    offset: np.ndarray  # [K] int64, row of frame `start` in boxes
    boxes: np.ndarray  # [S, 4] float64
    present: np.ndarray  # [S] bool

    @classmethod
    def from_arrays(cls, tubes: list[np.ndarray]) -> TubeSet:
        """Build from tubes given as [n, 5] arrays of (frame, x1, y1, x2, y2); rows in any order."""
        n = len(tubes)
        start = np.zeros(n, np.int64)
        end = np.zeros(n, np.int64)
        frames, rows = [], []
        for k, t in enumerate(tubes):
            t = np.asarray(t, dtype=np.float64).reshape(-1, 5)
            if t.shape[0] == 0:
                raise ValueError(f"tube {k} has no boxes")
            f = t[:, 0].astype(np.int64)
            start[k], end[k] = f.min(), f.max()
            frames.append(f)
            rows.append(t[:, 1:5])
        length = end - start + 1
        offset = np.concatenate(([0], np.cumsum(length)[:-1])).astype(np.int64)
        boxes = np.zeros((int(length.sum()), 4))
        present = np.zeros(int(length.sum()), bool)
        if n:
            tube_of = np.repeat(np.arange(n), [len(f) for f in frames])
            f_all = np.concatenate(frames)
            at = offset[tube_of] + f_all - start[tube_of]
            boxes[at] = np.concatenate(rows)
            present[at] = True
        return cls(start, end, offset, boxes, present)


def iou3dt_pairs(tubes: TubeSet, ia: np.ndarray, ib: np.ndarray, plus_one: bool = True) -> np.ndarray:
    """Spatio-temporal IoU of tube ia[p] with tube ib[p] (both of one video), for every pair p -> [P].

    ACT's iou3dt: with tmin = max(starts) and tmax = min(ends), 0 when tmax < tmin; otherwise
    (tmax - tmin + 1) / (max(ends) - min(starts) + 1) times the mean 2D IoU over the frames of
    [tmin, tmax]. Where a tube skips frames, the mean runs over the frames of [tmin, tmax] that both
    tubes have (0 when there are none); for gap-free tubes this is exactly ACT's value.
    """
    ia = np.asarray(ia, np.int64)
    ib = np.asarray(ib, np.int64)
    out = np.zeros(ia.size)
    if ia.size == 0:
        return out
    tmin = np.maximum(tubes.start[ia], tubes.start[ib])
    tmax = np.minimum(tubes.end[ia], tubes.end[ib])
    length = np.maximum(tmax - tmin + 1, 0)
    # process pairs in chunks so that the (pair, frame) rows stay bounded
    bounds = np.searchsorted(np.cumsum(length), np.arange(_PAIR_FRAME_CHUNK, length.sum(), _PAIR_FRAME_CHUNK))
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, ia.size]):
        sl = slice(int(lo), int(hi))
        out[sl] = _spatial_mean(tubes, ia[sl], ib[sl], tmin[sl], length[sl], plus_one)
    union_t = np.maximum(tubes.end[ia], tubes.end[ib]) - np.minimum(tubes.start[ia], tubes.start[ib]) + 1
    return np.where(length > 0, out * length / union_t, 0.0)


def _spatial_mean(tubes: TubeSet, ia, ib, tmin, length, plus_one) -> np.ndarray:
    """Mean per-frame IoU over the overlapping frames both tubes have; [P]."""
    p = ia.size
    pair = np.repeat(np.arange(p), length)  # [R] pair of each (pair, frame) row
    within = np.arange(pair.size) - np.repeat(np.cumsum(length) - length, length)
    frame = tmin[pair] + within
    ra = tubes.offset[ia[pair]] + frame - tubes.start[ia[pair]]
    rb = tubes.offset[ib[pair]] + frame - tubes.start[ib[pair]]
    both = tubes.present[ra] & tubes.present[rb]
    iou = iou2d_pairs(tubes.boxes[ra], tubes.boxes[rb], plus_one)
    n = np.bincount(pair, weights=both, minlength=p)
    s = np.bincount(pair, weights=np.where(both, iou, 0.0), minlength=p)
    return np.where(n > 0, s / np.maximum(n, 1), 0.0)


def iou3dt(tube_a: np.ndarray, tube_b: np.ndarray, plus_one: bool = True) -> float:
    """Spatio-temporal IoU of two tubes, each [n, 5] of (frame, x1, y1, x2, y2); see iou3dt_pairs."""
    ts = TubeSet.from_arrays([tube_a, tube_b])
    return float(iou3dt_pairs(ts, np.array([0]), np.array([1]), plus_one)[0])


def within_group_rank(group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank of each item among the items of its group, keeping the given order.

    Returns:
        (order, rank): order lists the items grouped (stable), rank[i] is item i's position in its group.
    """
    order = np.argsort(group, kind="stable")
    g = group[order]
    first = np.r_[True, g[1:] != g[:-1]] if g.size else np.zeros(0, bool)
    starts = np.flatnonzero(first)
    sizes = np.diff(np.r_[starts, g.size])
    rank = np.empty(group.size, np.int64)
    rank[order] = np.arange(g.size) - np.repeat(starts, sizes)
    return order, rank


def nms3dt_grouped(
    tubes: TubeSet, scores: np.ndarray, group: np.ndarray, overlap: float = 0.3, plus_one: bool = True
) -> np.ndarray:
    """ACT's nms3dt run independently in every group (ACT: one group per video and class).

    In score order, a tube is kept unless its iou3dt with an already kept tube of its group is
    > overlap. Equal scores: the later tube in input order goes first, as ACT's pop from the end of
    an ascending (stable) argsort does.

    Returns:
        Indices of the kept tubes, by group id, then in keep order (score descending).
    """
    scores = np.asarray(scores, np.float64)
    group = np.asarray(group, np.int64)
    n = scores.size
    if n == 0:
        return np.zeros(0, np.int64)
    # NMS order: group, then score descending, then later index first
    order = np.lexsort((-np.arange(n), -scores, group))
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[starts, n])
    pos_in_group = np.arange(n) - np.repeat(starts, sizes)
    # every pair (i ahead of j) of one group, as positions in `order`
    partners = np.repeat(sizes, sizes) - 1 - pos_in_group
    pi = np.repeat(np.arange(n), partners)
    pj = pi + 1 + np.arange(pi.size) - np.repeat(np.cumsum(partners) - partners, partners)
    ious = iou3dt_pairs(tubes, order[pi], order[pj], plus_one)
    suppress_pi, suppress_pj = pi[ious > overlap], pj[ious > overlap]
    by_rank = np.argsort(pos_in_group[suppress_pi], kind="stable")
    suppress_pi, suppress_pj = suppress_pi[by_rank], suppress_pj[by_rank]
    cut = np.searchsorted(pos_in_group[suppress_pi], np.arange(sizes.max() + 1))
    suppressed = np.zeros(n, bool)
    for k in range(int(sizes.max())):
        # the rank-k tube of each group is final now: every tube ahead of it has been decided
        lo, hi = cut[k], cut[k + 1]
        src, dst = suppress_pi[lo:hi], suppress_pj[lo:hi]
        suppressed[dst[~suppressed[src]]] = True
    return order[~suppressed]


def nms3dt(tubes: list[np.ndarray], scores, overlap: float = 0.3, plus_one: bool = True) -> np.ndarray:
    """ACT's tube NMS: indices of the tubes kept, highest score first; see nms3dt_grouped."""
    if len(tubes) == 0:
        return np.zeros(0, np.int64)
    ts = TubeSet.from_arrays(tubes)
    return nms3dt_grouped(ts, np.asarray(scores), np.zeros(len(tubes), np.int64), overlap, plus_one)


def pr_to_ap_act(precision: np.ndarray, recall: np.ndarray) -> float:
    """ACT's AP: trapezoidal area under the raw precision-recall curve.

    Args:
        precision, recall: [N] after each ranked detection. The point (precision 1, recall 0) is put in
            front, and the curve is held in float32, as ACT's ``pr`` array is.

    Returns:
        sum_i (r[i] - r[i-1]) * (p[i] + p[i-1]) / 2 over the N + 1 points.
    """
    p = np.r_[1.0, np.asarray(precision, np.float64)].astype(np.float32)
    r = np.r_[0.0, np.asarray(recall, np.float64)].astype(np.float32)
    return float(np.sum((r[1:] - r[:-1]) * (p[1:] + p[:-1]) * np.float32(0.5)))


def voc_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """PASCAL VOC (2010+) all-point interpolated AP.

    Args:
        precision, recall: [N] after each ranked detection.

    Returns:
        The area under the precision envelope (max precision at any recall >= r), with the curve
        extended by (recall 0, precision 0) and (recall 1, precision 0) before taking the envelope.
    """
    mrec = np.r_[0.0, np.asarray(recall, np.float64), 1.0]
    mpre = np.r_[0.0, np.asarray(precision, np.float64), 0.0]
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1]) + 1
    return float(np.sum((mrec[steps] - mrec[steps - 1]) * mpre[steps]))
