"""Validation and normalisation of label rows before they enter the label store (labels.py).

Every problem is collected, each naming the video and the frame, so an append is refused whole with the
full list; rows that pass come out as plain records in LABELS_SCHEMA's columns.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

SOURCES = ("init", "oracle", "human")
WHOLE_VIDEO = -1  # frame value of an AL-STAL row: the annotation covers the whole video

SEGMENT_TYPE = pa.struct([("t_start", pa.float64()), ("t_end", pa.float64()), ("label", pa.int32())])

LABELS_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("frame", pa.int32()),  # 0-based; -1 = whole video (AL-STAL)
        ("cycle", pa.int32()),  # active-learning cycle of the append
        ("source", pa.string()),  # "init" | "oracle" | "human"
        ("boxes", pa.list_(pa.list_(pa.float32()))),  # [n_boxes][4] x1,y1,x2,y2; [] = annotated negative
        ("box_labels", pa.list_(pa.int32())),  # [n_boxes] class index per box
        ("box_tracks", pa.list_(pa.int32())),  # [n_boxes or 0] track identity per box (actor), [] = unknown
        ("mask_rle", pa.list_(pa.list_(pa.int32()))),  # [n_boxes or 0][counts] COCO RLE per box
        ("segments", pa.list_(SEGMENT_TYPE)),  # AL-STAL segments in seconds, else []
        ("cost", pa.float64()),  # annotation cost in clicks
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)
REQUIRED = ("video_id", "frame", "cost")
OPTIONAL = ("boxes", "box_labels", "box_tracks", "mask_rle", "segments", "cycle", "source")

def index_lookup(index: pd.DataFrame | pa.Table) -> dict[str, tuple[int, int, int]]:
    """video_id -> (num_frames, height, width)."""
    df = index.to_pandas() if isinstance(index, pa.Table) else index
    missing = [c for c in ("video_id", "num_frames", "height", "width") if c not in df.columns]
    if missing:
        raise ValueError(f"label store index lacks columns {missing}")
    return {str(v): (int(n), int(h), int(w))
            for v, n, h, w in zip(df["video_id"], df["num_frames"], df["height"], df["width"], strict=True)}


def _as_dataframe(rows) -> pd.DataFrame:
    if isinstance(rows, pa.Table):
        return rows.to_pandas()
    if isinstance(rows, pd.DataFrame):
        return rows
    if isinstance(rows, list):
        return pd.DataFrame(rows)
    raise TypeError(
        f"rows must be a DataFrame, a pyarrow Table or a list of dicts, got {type(rows).__name__}"
    )


def normalize_rows(rows, cycle: int, source: str, index) -> tuple[list[str], list[dict]]:
    """Check the append's arguments and rows; return (problems, rows as plain python values)."""
    df = _as_dataframe(rows)
    problems = []
    if isinstance(cycle, bool) or not isinstance(cycle, (int, np.integer)) or cycle < 0:
        problems.append(f"cycle must be an integer >= 0, got {cycle!r}")
    if source not in SOURCES:
        problems.append(f"source must be one of {SOURCES}, got {source!r}")
    missing = [c for c in REQUIRED if c not in df.columns]
    unknown = [c for c in df.columns if c not in REQUIRED + OPTIONAL]
    if missing:
        problems.append(f"missing required column(s) {missing}")
    if unknown:
        problems.append(f"unknown column(s) {unknown} (allowed: {list(REQUIRED + OPTIONAL)})")
    if len(df) == 0:
        problems.append("no rows to append")
    if problems:
        return problems, []
    records = []
    for rec in df.to_dict("records"):
        row, row_problems = _normalize_row(rec, cycle, source, index)
        records.append(row)
        problems += row_problems
    return problems, records


def _normalize_row(rec: dict, cycle: int, source: str, index) -> tuple[dict, list[str]]:
    video, frame = rec["video_id"], _as_int(rec["frame"])
    where = f"video {video!r} frame {frame if frame is not None else _show(rec['frame'])}"
    problems = []
    if not isinstance(video, str) or not video:
        problems.append(f"{where}: video_id must be a non-empty string")
    if frame is None or frame < WHOLE_VIDEO:
        problems.append(f"{where}: frame must be an integer >= 0, or -1 for the whole video")
    cost = _as_float(rec["cost"])
    if cost is None or cost < 0:
        problems.append(f"{where}: cost must be a finite number >= 0, got {rec['cost']!r}")
    for name, expected in (("cycle", cycle), ("source", source)):
        if name in rec and rec[name] != expected:
            problems.append(f"{where}: column {name}={rec[name]!r} differs from the argument {expected!r}")
    boxes, box_problems = _boxes(rec.get("boxes"))
    labels = [_as_int(x) for x in _as_list(rec.get("box_labels"))]
    tracks = [_as_int(x) for x in _as_list(rec.get("box_tracks"))]
    masks, masks_ok = _masks(rec.get("mask_rle"))
    segments, seg_problems = _segments(rec.get("segments"))
    problems += [f"{where}: {p}" for p in box_problems + seg_problems]
    if len(labels) != len(boxes) or any(x is None or x < 0 for x in labels):
        problems.append(f"{where}: box_labels must hold one integer >= 0 per box "
                        f"({len(boxes)} boxes, got {len(labels)} labels)")
    if tracks and (len(tracks) != len(boxes) or any(x is None or x < 0 for x in tracks)
                   or len(set(tracks)) != len(tracks)):
        problems.append(f"{where}: box_tracks must be empty or hold one distinct integer >= 0 per box "
                        f"({len(boxes)} boxes, got {_show(rec.get('box_tracks'))})")
    if masks and (len(masks) != len(boxes) or not masks_ok):
        problems.append(f"{where}: mask_rle must be empty or hold one RLE of non-negative counts per box "
                        f"({len(boxes)} boxes, got {len(masks)} masks)")
    if frame == WHOLE_VIDEO and boxes:
        problems.append(f"{where}: a whole-video row (frame -1) cannot carry boxes")
    if segments and frame != WHOLE_VIDEO:
        problems.append(f"{where}: segments belong on a whole-video row (frame -1)")
    if index is not None and not problems:
        problems += [f"{where}: {p}" for p in _against_index(video, frame, boxes, masks, index)]
    row = {"video_id": video, "frame": frame, "cycle": cycle, "source": source, "boxes": boxes,
           "box_labels": labels, "box_tracks": tracks, "mask_rle": masks, "segments": segments, "cost": cost}
    return row, problems


def _boxes(value) -> tuple[list[list[float]], list[str]]:
    boxes, problems = [], []
    for i, box in enumerate(_as_list(value)):
        b = [_as_float(x) for x in _as_list(box)]
        if len(b) != 4 or any(x is None for x in b):
            problems.append(f"box {i} must be 4 finite numbers [x1, y1, x2, y2], got {_show(box)}")
        elif not (b[0] < b[2] and b[1] < b[3]):
            problems.append(f"box {i} {b} needs x1 < x2 and y1 < y2")
        boxes.append(b)
    return boxes, problems


def _masks(value) -> tuple[list[list[int]], bool]:
    """RLE counts as int lists, and whether all are 1-D non-negative integers (numpy: masks are long)."""
    masks, ok = [], True
    for m in _as_list(value):
        try:
            counts = np.asarray(_as_list(m))
        except ValueError:  # ragged nesting
            counts = np.zeros((0, 0))
        if counts.ndim != 1 or (counts.size and (counts.dtype.kind not in "iu" or counts.min() < 0)):
            ok, counts = False, np.zeros(0)
        masks.append(counts.astype(np.int64).tolist())
    return masks, ok


def _segments(value) -> tuple[list[dict], list[str]]:
    segments, problems = [], []
    for i, seg in enumerate(_as_list(value)):
        if isinstance(seg, Mapping):
            seg = (seg.get("t_start"), seg.get("t_end"), seg.get("label"))
        s = _as_list(seg)
        t0, t1, label = (_as_float(s[0]), _as_float(s[1]), _as_int(s[2])) if len(s) == 3 else (None,) * 3
        if t0 is None or t1 is None or label is None or not (0 <= t0 < t1) or label < 0:
            problems.append(f"segment {i} must be (t_start, t_end, label) with 0 <= t_start < t_end, "
                            f"label >= 0, got {_show(seg)}")
        segments.append({"t_start": t0, "t_end": t1, "label": label})
    return segments, problems


def _against_index(video, frame, boxes, masks, index) -> list[str]:
    if video not in index:
        return ["video not in the dataset index"]
    num_frames, height, width = index[video]
    problems = []
    if frame >= num_frames:
        problems.append(f"frame out of range: the video has {num_frames} frames")
    for i, b in enumerate(boxes):
        if b[0] < 0 or b[1] < 0 or b[2] > width or b[3] > height:
            problems.append(f"box {i} {b} lies outside the {width}x{height} frame")
    for i, m in enumerate(masks):
        if sum(m) != height * width:
            problems.append(f"mask {i} RLE covers {sum(m)} pixels, the frame has {height}x{width}")
    return problems


def duplicate_problems(records: list[dict], stored: set) -> list[str]:
    """A frame is annotated once: no repeat within the append nor of a stored (video_id, frame)."""
    seen, problems = set(), []
    for r in records:
        key = (r["video_id"], r["frame"])
        if key in seen:
            problems.append(f"video {key[0]!r} frame {key[1]}: appears twice in this append")
        elif key in stored:
            problems.append(f"video {key[0]!r} frame {key[1]}: already annotated in the store")
        seen.add(key)
    return problems


def _as_list(value) -> list:
    """Lists, tuples and arrays as a list; None / NaN (a missing cell) as []."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, np.ndarray):
        return list(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]  # a scalar where a list belongs: kept so the checks report it


def _as_int(value) -> int | None:
    """An integer (or integral float, as pandas makes of int columns with gaps), else None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    return None


def _as_float(value) -> float | None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _show(value) -> str:
    return repr(value.tolist() if isinstance(value, np.ndarray) else value)[:80]
