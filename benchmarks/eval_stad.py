"""Seconds of `evaluate_stad` (frame-mAP and video-mAP) on 1,000 videos x 100 frames of random data.

Each video has one ground-truth tube of a random class over a random span and three tube detections
(one of the true class) jittered around it, each with a detection on every frame: 300,000 frame
detections and 3,000 tubes over 24 classes. Last line of output: JSON
{"act_s", "voc_s", "parse_s", "videos", "frames", "frame_detections", "tube_detections"}.

    python -m benchmarks.eval_stad
"""

from __future__ import annotations

import json
import time

import numpy as np

from raylab.eval.stad import evaluate_stad
from raylab.eval.stad_json import parse_stad


def random_document(videos: int = 1000, frames: int = 100, classes: int = 24, seed: int = 0) -> dict:
    """The evaluation JSON (docs/evaluation.md) with jittered detections around each true tube."""
    rng = np.random.default_rng(seed)
    doc = {"labels": [f"c{i}" for i in range(classes)], "videos": {}, "frame_detections": [],
           "tube_detections": []}
    for v in range(videos):
        name, label = f"v{v}", int(rng.integers(classes))
        start = int(rng.integers(1, 30))
        end = int(rng.integers(start + 20, frames + 1))
        x, y = rng.uniform(0, 200, 2)
        box = np.array([x, y, x + 80, y + 100])
        truth = [[f, *box] for f in range(start, end + 1)]
        doc["videos"][name] = {"nframes": frames, "width": 320, "height": 240,
                               "tubes": [{"label": label, "boxes": truth}]}
        for k in range(3):
            c = label if k == 0 else int(rng.integers(classes))
            boxes = box + rng.normal(0, 10, (frames, 4))  # [frames, 4]
            tube = [[f + 1, *boxes[f]] for f in range(frames)]
            doc["tube_detections"].append({"video": name, "label": c, "score": float(rng.random()),
                                           "boxes": tube})
            doc["frame_detections"] += [{"video": name, "frame": f + 1, "label": c,
                                         "score": float(rng.random()), "box": boxes[f].tolist()}
                                        for f in range(frames)]
    return doc


def main() -> None:
    doc = random_document()
    result = {}
    for protocol in ("act", "voc"):
        start = time.perf_counter()
        evaluate_stad(doc, protocol=protocol)
        result[f"{protocol}_s"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    parse_stad(doc)
    result["parse_s"] = round(time.perf_counter() - start, 2)
    result.update(videos=len(doc["videos"]), frames=100, frame_detections=len(doc["frame_detections"]),
                  tube_detections=len(doc["tube_detections"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
