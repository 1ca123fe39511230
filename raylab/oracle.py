"""Oracles: who answers a selection with annotations.

The simulated oracle (what both papers do) reveals the ground truth of the requested frames. A
requested frame outside every action tube is answered with no box: a labelled negative.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

CLICKS_PER_ACTOR = 2.0  # a box is drawn with two clicks (opposite corners)


def _requests_frame(requests: Mapping[str, np.ndarray] | pd.DataFrame) -> pd.DataFrame:
    if isinstance(requests, pd.DataFrame):
        return requests[["video_id", "frame"]].astype({"frame": np.int64})
    rows = [(v, int(f)) for v, frames in requests.items() for f in np.asarray(frames).ravel()]
    return pd.DataFrame(rows, columns=["video_id", "frame"]).astype({"frame": np.int64})


def reveal_frames(
    gt: pd.DataFrame,
    requests: Mapping[str, np.ndarray] | pd.DataFrame,
    clicks_per_actor: float = CLICKS_PER_ACTOR,
) -> pd.DataFrame:
    """Ground truth of the requested frames, as label-store rows.

    Args:
        gt: spatio-temporal ground truth (schema.GT_BOXES_SCHEMA columns).
        requests: video_id -> frames, or a table with video_id and frame columns.
        clicks_per_actor: annotation cost of one actor on one frame.

    Returns:
        one row per requested frame, in request order: video_id, frame, boxes (list of [x1, y1, x2, y2]),
        box_labels, mask_rle (one RLE per box, or [] when the ground truth has boxes only), cost
        (actors x clicks_per_actor).
    """
    req = _requests_frame(requests).reset_index(drop=True)
    req["_order"] = np.arange(len(req))
    hits = req.merge(gt.astype({"frame": np.int64}), on=["video_id", "frame"], how="inner")
    hits = hits.sort_values(["_order", "actor"])
    by_request = {order: group for order, group in hits.groupby("_order", sort=False)}
    rows = []
    for order, video_id, frame in zip(req["_order"], req["video_id"], req["frame"]):
        group = by_request.get(order)
        if group is None:
            boxes, labels, masks = [], [], []
        else:
            boxes = group[["x1", "y1", "x2", "y2"]].to_numpy(np.float32).tolist()
            labels = group["label"].astype(int).tolist()
            masks = [] if group["mask_rle"].isna().any() else [list(m) for m in group["mask_rle"]]
        rows.append((video_id, int(frame), boxes, labels, masks, clicks_per_actor * len(boxes)))
    return pd.DataFrame(rows, columns=["video_id", "frame", "boxes", "box_labels", "mask_rle", "cost"])
