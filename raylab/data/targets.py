"""Per-frame training targets of a clip from sparse frame labels: pseudo-labels, masks, MGW weights.

Pure numpy, no Ray, no I/O. A video's labels are a dict frame -> FrameLabel holding the annotated frames
only; an annotated frame with no box is a labelled negative (the annotator saw no actor there).

Pseudo-labels for unannotated frames (ASL, before Eq.4): an actor's box is interpolated linearly between
the previous and the next annotated frame when both show it. Actors are paired by their track identity
(`box_tracks`) when both frames carry one; labels without identities (a human import, an old store) pair
by position when both frames hold the same number of boxes. The pseudo-label has the actors of the
nearest annotated frame (the earlier one on a tie): those shown on both sides interpolated, the others
as the nearest frame has them. Where the labels carry masks, an interpolated actor's mask is the nearest
frame's mask as it is (`pseudo_masks="copied"`, the default: the mask does not follow the interpolated
box) or moved and scaled onto the interpolated box ("moved": closer to the true mask, level on the
learning benchmark; docs/RESULTS.md step 23). Empty frames and frames before the first / after the last
annotation take the nearest annotated frame.

A gap between two annotated frames that show different actors (one enters, leaves or is hidden somewhere
in it) cannot be interpolated: the two annotations say the nearest one's copy is wrong somewhere in the
gap, and not where. `changed_gaps="skip"` (the default) gives its frames loss weight 0; "nearest" weights
their copy by MGW as any pseudo-label. ASL does not say what to do there; on SynthActions the copies in
such gaps are wrong about the actor's presence 3-6 times as often as elsewhere (docs/RESULTS.md step 18).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from raylab.data.rle import rle_decode
from raylab.proximity import mgw_weights

CHANGED_GAPS = ("nearest", "skip")  # what the loss makes of a gap whose two annotations differ in actors
PSEUDO_MASKS = ("copied", "moved")  # an interpolated actor's mask: as it is, or onto its interpolated box


@dataclass(frozen=True)
class FrameLabel:
    boxes: np.ndarray  # float32 [K, 4] x1, y1, x2, y2 in pixels of the stored video
    masks: tuple[np.ndarray, ...] = ()  # K RLE counts (one per box) or () when boxes only
    tracks: tuple[int, ...] = ()  # K track identities (one per box) or () when unknown
    mask_boxes: np.ndarray | None = None  # float32 [K, 4] the boxes the masks were drawn in, where they
    #                                       differ from `boxes` (a pseudo-label's moved masks), else None

    @property
    def empty(self) -> bool:
        return len(self.boxes) == 0


VideoLabels = Mapping[int, FrameLabel]


def frame_label(boxes: Iterable, masks: Iterable | None = None, tracks: Iterable | None = None) -> FrameLabel:
    """Build a FrameLabel from plain lists (as stored in parquet)."""
    b = np.asarray(list(boxes) if boxes is not None else [], dtype=np.float32).reshape(-1, 4)
    m = tuple(np.asarray(c, dtype=np.int32) for c in (() if masks is None else masks))
    t = tuple(int(x) for x in (() if tracks is None else tracks))
    return FrameLabel(b, m if len(m) == len(b) else (), t if len(t) == len(b) else ())


def _pairs(a: FrameLabel, b: FrameLabel) -> list[tuple[int, int | None]]:
    """For each box of `a`, the index of the same actor's box in `b` (None: not shown there)."""
    if a.tracks and b.tracks:
        where = {t: j for j, t in enumerate(b.tracks)}
        return [(i, where.get(t)) for i, t in enumerate(a.tracks)]
    if len(a.boxes) == len(b.boxes):
        return [(i, i) for i in range(len(a.boxes))]
    return [(i, None) for i in range(len(a.boxes))]


def same_actors(a: FrameLabel, b: FrameLabel) -> bool:
    """Do two annotated frames show the same actors: as many boxes, each paired with one of the other
    frame's (`_pairs`: by track identity, else by position)? Two labelled negatives do."""
    return len(a.boxes) == len(b.boxes) and all(j is not None for _, j in _pairs(a, b))


def in_changed_gap(labels: VideoLabels, frames: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """bool [N]: the frame lies strictly between two consecutive annotated frames that do not show the
    same actors (`same_actors`). Annotated frames and frames before the first / after the last
    annotation are never in one.

    Args:
        labels: the video's annotated frames; frames: int [N]; annotated: sorted keys of `labels`.
    """
    frames = np.asarray(frames, dtype=np.int64)
    out = np.zeros(frames.shape, dtype=bool)
    if annotated.size < 2:
        return out
    pos = np.searchsorted(annotated, frames)
    inside = (pos > 0) & (pos < annotated.size) & ~np.isin(frames, annotated)
    for i in np.flatnonzero(inside):
        prev, nxt = int(annotated[pos[i] - 1]), int(annotated[pos[i]])
        out[i] = not same_actors(labels[prev], labels[nxt])
    return out


def pseudo_label(
    labels: VideoLabels, frame: int, annotated: np.ndarray | None = None, pseudo_masks: str = "copied"
) -> FrameLabel | None:
    """The label of `frame`: its own if annotated, else interpolated / nearest; None if no annotation.

    Args:
        labels: the video's annotated frames.
        frame: frame index.
        annotated: sorted keys of `labels` (pass it when calling in a loop).
        pseudo_masks: "moved" draws an interpolated actor's mask in its interpolated box (`mask_boxes`
            records where it came from), "copied" leaves it where the nearest frame has it.
    """
    if pseudo_masks not in PSEUDO_MASKS:
        raise ValueError(f"pseudo_masks must be one of {PSEUDO_MASKS}, got {pseudo_masks!r}")
    if frame in labels:
        return labels[frame]
    if annotated is None:
        annotated = np.array(sorted(labels), dtype=np.int64)
    if annotated.size == 0:
        return None
    pos = int(np.searchsorted(annotated, frame))
    prev = int(annotated[pos - 1]) if pos > 0 else None
    nxt = int(annotated[pos]) if pos < annotated.size else None
    if prev is None or nxt is None:
        return labels[prev if nxt is None else nxt]
    t = (frame - prev) / (nxt - prev)
    near, far, w_far = (labels[prev], labels[nxt], t) if t <= 0.5 else (labels[nxt], labels[prev], 1.0 - t)
    if near.empty or far.empty:
        return near
    boxes = near.boxes.copy()
    for i, j in _pairs(near, far):
        if j is not None:
            boxes[i] = (1.0 - w_far) * near.boxes[i] + w_far * far.boxes[j]
    moved = bool(near.masks) and pseudo_masks == "moved"
    return FrameLabel(boxes, near.masks, near.tracks, near.boxes if moved else None)


def render_foreground(
    label: FrameLabel | None, src_hw: tuple[int, int], out_hw: tuple[int, int]
) -> np.ndarray:
    """Foreground map of one frame at the output resolution: the union of masks, else of filled boxes.

    A pixel belongs to a box when its centre lies inside it (after scaling to the output size). A mask
    takes the source pixel under each output pixel's centre; where `label.mask_boxes` is set, mask k is
    first mapped from `mask_boxes[k]` onto `boxes[k]` (shifted and scaled per axis; x2, y2 exclusive).

    Returns:
        uint8 [H_out, W_out] in {0, 1}.
    """
    out = np.zeros(out_hw, dtype=np.uint8)
    if label is None or label.empty:
        return out
    (sh, sw), (oh, ow) = src_hw, out_hw
    ys = (np.arange(oh) + 0.5) * sh / oh  # output pixel centres in source coordinates
    xs = (np.arange(ow) + 0.5) * sw / ow
    if label.masks:
        for k, counts in enumerate(label.masks):
            y, x = ys, xs
            if label.mask_boxes is not None:  # where in the drawn mask each centre of `boxes[k]` falls
                (bx1, by1, bx2, by2), (mx1, my1, mx2, my2) = label.boxes[k], label.mask_boxes[k]
                y = my1 + (ys - by1) * _scale(my2 - my1, by2 - by1)
                x = mx1 + (xs - bx1) * _scale(mx2 - mx1, bx2 - bx1)
            rows, cols = np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
            in_rows, in_cols = (rows >= 0) & (rows < sh), (cols >= 0) & (cols < sw)
            out[np.ix_(in_rows, in_cols)] |= rle_decode(counts, sh, sw)[np.ix_(rows[in_rows], cols[in_cols])]
        return out
    for x1, y1, x2, y2 in label.boxes:
        inside_y = (ys >= y1) & (ys < y2)
        inside_x = (xs >= x1) & (xs < x2)
        out |= (inside_y[:, None] & inside_x[None, :]).astype(np.uint8)
    return out


def _scale(drawn: float, target: float) -> float:
    """Source pixels per target pixel along one axis; 1 where either extent is empty."""
    return drawn / target if drawn > 0 and target > 0 else 1.0


def clip_targets(
    labels: VideoLabels,
    frames: np.ndarray,
    src_hw: tuple[int, int],
    out_hw: tuple[int, int],
    sigma: float,
    weighting: str = "mgw",
    changed_gaps: str = "skip",
    pseudo_masks: str = "copied",
) -> dict[str, np.ndarray]:
    """Targets of one clip. `changed_gaps`: "skip" gives the frames `in_changed_gap` weight 0,
    "nearest" leaves their weight to `weighting`; `pseudo_masks`: see `pseudo_label` (module doc).

    Returns:
        fg: uint8 [T, H, W] foreground (annotated frames' labels and pseudo-labels elsewhere)
        annotated: bool [T] frame is annotated
        weight: float32 [T] MGW / masking / interpolation loss weight
    """
    if changed_gaps not in CHANGED_GAPS:
        raise ValueError(f"changed_gaps must be one of {CHANGED_GAPS}, got {changed_gaps!r}")
    frames = np.asarray(frames, dtype=np.int64)
    annotated_frames = np.array(sorted(labels), dtype=np.int64)
    fg = np.stack([render_foreground(pseudo_label(labels, int(f), annotated_frames, pseudo_masks), src_hw,
                                     out_hw) for f in frames])
    weight = mgw_weights(frames, annotated_frames, sigma, weighting)
    if changed_gaps == "skip":
        weight[in_changed_gap(labels, frames, annotated_frames)] = 0.0
    return {"fg": fg, "annotated": np.isin(frames, annotated_frames), "weight": weight}


def labels_near(annotated: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """The annotated frames a clip's targets depend on: those inside its span and one on each side.

    Pseudo-labels and MGW weights only look at the nearest annotated frames, so this subset gives the
    same targets as the whole video's labels.
    """
    annotated = np.asarray(annotated, dtype=np.int64)  # sorted
    lo, hi = int(np.min(frames)), int(np.max(frames))
    first = max(int(np.searchsorted(annotated, lo)) - 1, 0)
    last = min(int(np.searchsorted(annotated, hi, side="right")) + 1, annotated.size)
    return annotated[first:last]


def group_labels(rows) -> dict[str, dict[int, FrameLabel]]:
    """Group label rows (columns video_id, frame, boxes[, mask_rle, box_tracks]) into video -> frame ->
    FrameLabel.

    Rows with frame -1 (whole-video labels of AL-STAL) are left out.
    """
    df = rows.to_pandas() if hasattr(rows, "to_pandas") else rows
    masks = df["mask_rle"] if "mask_rle" in df else [None] * len(df)
    tracks = df["box_tracks"] if "box_tracks" in df else [None] * len(df)
    out: dict[str, dict[int, FrameLabel]] = {}
    for video_id, frame, boxes, mask, track in zip(df["video_id"], df["frame"], df["boxes"], masks, tracks):
        if int(frame) >= 0:
            out.setdefault(video_id, {})[int(frame)] = frame_label(boxes, mask, track)
    return out
