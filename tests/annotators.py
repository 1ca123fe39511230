"""Annotators played by functions: they answer exported tasks with the ground truth, in each tool's own
export layout (CVAT tracks; Label Studio keyframes in percent, frames numbered from 1). Shared by the
oracle tests and the loop's end-to-end human round trip.
"""

from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd

from raylab.oracle import export_selection


def segments(frames: list[int]) -> list[tuple[int, int]]:
    """Contiguous runs [(first, last), ...] of sorted frames."""
    runs = []
    for f in frames:
        if runs and f == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], f)
        else:
            runs.append((f, f))
    return runs


def cvat_annotate(text: str, gt: pd.DataFrame, index: pd.DataFrame, classes: list[str]) -> str:
    """Play CVAT: each ground-truth actor of each task becomes a track, exported as 'CVAT for video 1.1'
    does: a box on every frame the actor is on (keyframes at the ends) and an outside box after it."""
    root = ET.fromstring(text)
    num_frames = dict(zip(index["video_id"], index["num_frames"]))
    track_id = 0
    for v in root.findall("meta/raylab/video"):
        video = v.get("id")
        for _, rows in gt[gt["video_id"] == video].groupby("actor"):
            rows = rows.sort_values("frame")
            track = ET.SubElement(root, "track", id=str(track_id), label=classes[int(rows["label"].iloc[0])],
                                  source="manual", task_id=v.get("task_id"))
            ends = {last for _, last in segments(rows["frame"].tolist())}
            starts = {first for first, _ in segments(rows["frame"].tolist())}
            for r in rows.itertuples():
                coords = {k: f"{getattr(r, a):.2f}" for k, a in
                          (("xtl", "x1"), ("ytl", "y1"), ("xbr", "x2"), ("ybr", "y2"))}
                ET.SubElement(track, "box", frame=str(r.frame), keyframe=str(int(r.frame in starts | ends)),
                              outside="0", occluded="0", z_order="0", **coords)
                if r.frame in ends and r.frame + 1 < num_frames[video]:
                    ET.SubElement(track, "box", frame=str(r.frame + 1), keyframe="1", outside="1",
                                  occluded="0", z_order="0", **coords)
            track_id += 1
    return ET.tostring(root, encoding="unicode")


def labelstudio_annotate(tasks: list[dict], gt: pd.DataFrame, classes: list[str]) -> list[dict]:
    """Play Label Studio: a videorectangle region per ground-truth actor, keyframes where a person would
    set them (where the action starts, on each requested frame, where it ends: lifespan off), frames
    numbered from 1 and boxes in percent of the frame; then export the project as JSON."""
    out = []
    for task_id, task in enumerate(copy.deepcopy(tasks), start=1):
        data = task["data"]
        width, height, video = data["width"], data["height"], data["video_id"]
        results = []
        for actor, rows in gt[gt["video_id"] == data["video_id"]].groupby("actor"):
            by_frame = rows.set_index("frame")[["x1", "y1", "x2", "y2"]].astype(float)
            runs = segments(sorted(by_frame.index))
            ends = {last for _, last in runs}
            keys = sorted({int(f) for run in runs for f in run} | (set(data["frames"]) & set(by_frame.index)))
            sequence = [{"frame": f + 1, "enabled": f not in ends, "rotation": 0, "time": f / data["fps"],
                         "x": by_frame.at[f, "x1"] / width * 100, "y": by_frame.at[f, "y1"] / height * 100,
                         "width": (by_frame.at[f, "x2"] - by_frame.at[f, "x1"]) / width * 100,
                         "height": (by_frame.at[f, "y2"] - by_frame.at[f, "y1"]) / height * 100}
                        for f in keys]
            label = classes[int(rows["label"].iloc[0])]
            results.append({"id": f"{video}-{actor}", "type": "videorectangle", "from_name": "box",
                            "to_name": "video", "origin": "manual",
                            "value": {"framesCount": data["num_frames"], "sequence": sequence,
                                      "labels": [label]}})
        out.append({"id": task_id, "data": data, "predictions": [],
                    "annotations": [{"id": task_id, "completed_by": 1, "was_cancelled": False,
                                     "result": results}]})
    return out


def annotated(run_dir: Path, fmt: str, gt, classes, index) -> Path:
    """Export the pending selection and answer it as the tool would; the path of the tool's export."""
    exported = export_selection(run_dir, fmt)
    answer = run_dir / f"answer.{'xml' if fmt == 'cvat' else 'json'}"
    if fmt == "cvat":
        answer.write_text(cvat_annotate(exported.read_text(), gt, index, classes))
    else:
        answer.write_text(json.dumps(labelstudio_annotate(json.loads(exported.read_text()), gt, classes)))
    return answer
