"""Reading and validating the ground-truth-and-predictions JSON of ``raylab eval stad``.

The format is documented in docs/evaluation.md. Frames are 1-based here, as in ACT's ground truth.
Every problem found is reported at once, each naming the entry (video, tube, detection index, frame).
"""

from __future__ import annotations

import numpy as np

_MAX_SHOWN = 20  # problems listed in one error message


class StadFormatError(ValueError):
    """The evaluation JSON is malformed; the message names the file and every offending entry."""


def _fail(source: str, problems: list[str]) -> None:
    if problems:
        shown = "\n  - ".join(problems[:_MAX_SHOWN])
        more = f"\n  ... and {len(problems) - _MAX_SHOWN} more" if len(problems) > _MAX_SHOWN else ""
        raise StadFormatError(f"{source}: {len(problems)} problem(s):\n  - {shown}{more}")


def _boxes_array(rows, where: str, nframes: int, problems: list[str]) -> np.ndarray | None:
    """[n, 5] (frame, x1, y1, x2, y2) with frames in 1..nframes, once each, and x1 <= x2, y1 <= y2."""
    try:
        arr = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError):
        problems.append(f"{where}: boxes must be a list of [frame, x1, y1, x2, y2] numbers")
        return None
    if arr.ndim != 2 or arr.shape[1] != 5 or arr.shape[0] == 0:
        problems.append(f"{where}: boxes must be a non-empty list of [frame, x1, y1, x2, y2]")
        return None
    frames = arr[:, 0]
    bad = ~np.isfinite(arr).all(axis=1) | (frames != np.round(frames)) | (frames < 1) | (frames > nframes)
    for i in np.flatnonzero(bad)[:3]:
        problems.append(f"{where}.boxes[{i}]: frame {arr[i, 0]:g} outside 1..{nframes} or not finite")
    flipped = (arr[:, 3] < arr[:, 1]) | (arr[:, 4] < arr[:, 2])
    for i in np.flatnonzero(flipped & ~bad)[:3]:
        problems.append(f"{where}.boxes[{i}] (frame {int(arr[i, 0])}): needs x1 <= x2 and y1 <= y2")
    if np.unique(frames).size != frames.size:
        problems.append(f"{where}: a frame appears twice")
    if bad.any() or flipped.any():
        return None
    return arr[np.argsort(frames, kind="stable")]


def _label(value, where: str, n_labels: int, problems: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < n_labels:
        problems.append(f"{where}: label {value!r} is not an integer in 0..{n_labels - 1}")
        return -1
    return int(value)


def _parse_videos(videos: dict, n_labels: int, problems: list[str]):
    names, nframes = [], []
    gt_tubes, gt_video, gt_label = [], [], []
    for vi, (name, v) in enumerate(videos.items()):
        names.append(name)
        where = f"videos[{name!r}]"
        if not isinstance(v, dict) or not {"nframes", "width", "height", "tubes"} <= v.keys():
            problems.append(f"{where}: needs keys nframes, width, height, tubes")
            nframes.append(0)
            continue
        n = v["nframes"]
        if not isinstance(n, int) or n < 1:
            problems.append(f"{where}.nframes: {n!r} is not a positive integer")
            n = 0
        nframes.append(n)
        if not isinstance(v["tubes"], list):
            problems.append(f"{where}.tubes: must be a list")
            continue
        for ti, tube in enumerate(v["tubes"]):
            tw = f"{where}.tubes[{ti}]"
            if not isinstance(tube, dict) or not {"label", "boxes"} <= tube.keys():
                problems.append(f"{tw}: needs keys label, boxes")
                continue
            label = _label(tube["label"], tw, n_labels, problems)
            arr = _boxes_array(tube["boxes"], tw, n, problems)
            if arr is not None and label >= 0:
                gt_tubes.append(arr)
                gt_video.append(vi)
                gt_label.append(label)
    return names, np.asarray(nframes, np.int64), gt_tubes, gt_video, gt_label


def _parse_frame_dets(dets: list, index: dict, nframes, n_labels, problems) -> dict:
    cols = {"video": [], "frame": [], "label": [], "score": [], "box": []}
    for i, d in enumerate(dets):
        where = f"frame_detections[{i}]"
        try:
            video, frame, label, score, box = d["video"], d["frame"], d["label"], d["score"], d["box"]
        except (KeyError, TypeError):
            problems.append(f"{where}: needs keys video, frame, label, score, box")
            continue
        vi = index.get(video, -1) if isinstance(video, str) else -1
        if vi < 0:
            problems.append(f"{where}: unknown video {video!r}")
            continue
        if isinstance(frame, bool) or not isinstance(frame, int) or not 1 <= frame <= nframes[vi]:
            problems.append(f"{where} (video {video!r}): frame {frame!r} outside 1..{nframes[vi]}")
            continue
        label = _label(label, where, n_labels, problems)
        try:
            b = [float(x) for x in box]
            s = float(score)
        except (TypeError, ValueError):
            b, s = [], float("nan")
        if len(b) != 4 or not np.isfinite(b + [s]).all() or b[2] < b[0] or b[3] < b[1]:
            problems.append(f"{where} (video {video!r}, frame {frame}): needs a finite score and a box "
                            "[x1, y1, x2, y2] with x1 <= x2, y1 <= y2")
            continue
        if label >= 0:
            for k, val in zip(cols, (vi, frame, label, s, b)):
                cols[k].append(val)
    return {
        "video": np.asarray(cols["video"], np.int64),
        "frame": np.asarray(cols["frame"], np.int64),
        "label": np.asarray(cols["label"], np.int64),
        "score": np.asarray(cols["score"], np.float64),
        "box": np.asarray(cols["box"], np.float64).reshape(-1, 4),
    }


def _parse_tube_dets(dets: list, index: dict, nframes, n_labels, problems) -> dict:
    out = {"video": [], "label": [], "score": [], "tubes": []}
    for i, d in enumerate(dets):
        where = f"tube_detections[{i}]"
        if not isinstance(d, dict) or not {"video", "label", "score", "boxes"} <= d.keys():
            problems.append(f"{where}: needs keys video, label, score, boxes")
            continue
        vi = index.get(d["video"], -1) if isinstance(d["video"], str) else -1
        if vi < 0:
            problems.append(f"{where}: unknown video {d['video']!r}")
            continue
        label = _label(d["label"], where, n_labels, problems)
        arr = _boxes_array(d["boxes"], f"{where} (video {d['video']!r})", nframes[vi], problems)
        try:
            score = float(d["score"])
        except (TypeError, ValueError):
            score = float("nan")
        if not np.isfinite(score):
            problems.append(f"{where}: score {d['score']!r} is not a finite number")
        elif arr is not None and label >= 0:
            for k, val in zip(out, (vi, label, score, arr)):
                out[k].append(val)
    return {
        "video": np.asarray(out["video"], np.int64),
        "label": np.asarray(out["label"], np.int64),
        "score": np.asarray(out["score"], np.float64),
        "tubes": out["tubes"],
    }


def parse_stad(data, source: str = "<data>") -> dict:
    """Validate the evaluation JSON and turn it into arrays (video indices in the order listed).

    Returns:
        {"labels": [str], "videos": [str], "nframes": [V],
         "gt_boxes": {"video", "frame", "label", "box"} one row per ground-truth box,
         "gt_tubes": {"video", "label", "tubes"}, "frame_dets": {..., "score"}, "tube_dets": {...}}.
        Frames stay 1-based. Raises StadFormatError listing every problem found.
    """
    keys = ("labels", "videos", "frame_detections", "tube_detections")
    if not isinstance(data, dict):
        _fail(source, ["top level must be an object with keys " + ", ".join(keys)])
    _fail(source, [f"missing key {k!r}" for k in keys if k not in data])
    labels = data["labels"]
    problems: list[str] = []
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        _fail(source, ["labels: must be a list of class names"])
    if not isinstance(data["videos"], dict):
        _fail(source, ["videos: must be an object mapping video name to its entry"])
    for k in keys[2:]:
        if not isinstance(data[k], list):
            problems.append(f"{k}: must be a list")
    _fail(source, problems)
    names, nframes, tubes, t_video, t_label = _parse_videos(data["videos"], len(labels), problems)
    index = {n: i for i, n in enumerate(names)}
    frame_dets = _parse_frame_dets(data["frame_detections"], index, nframes, len(labels), problems)
    tube_dets = _parse_tube_dets(data["tube_detections"], index, nframes, len(labels), problems)
    _fail(source, problems)
    lengths = [len(t) for t in tubes]
    rows = np.concatenate(tubes) if tubes else np.zeros((0, 5))
    gt_boxes = {
        "video": np.repeat(np.asarray(t_video, np.int64), lengths),
        "frame": rows[:, 0].astype(np.int64),
        "label": np.repeat(np.asarray(t_label, np.int64), lengths),
        "box": rows[:, 1:5],
    }
    gt_tubes = {
        "video": np.asarray(t_video, np.int64), "label": np.asarray(t_label, np.int64), "tubes": tubes
    }
    return {
        "labels": labels, "videos": names, "nframes": nframes, "gt_boxes": gt_boxes,
        "gt_tubes": gt_tubes, "frame_dets": frame_dets, "tube_dets": tube_dets,
    }
