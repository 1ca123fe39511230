"""Seconds of `evaluate_tal` (mAP at tIoU) on 1,000 videos x 20 classes of random data.

Each 180 s video holds 1 to 15 ground-truth segments of one or two classes (THUMOS'14-like) and 200
scored predictions: half jittered copies of its segments with the true class, half random segments of
random classes: about 8,000 segments and 200,000 predictions. Last line of output: JSON
{"thumos14_s", "activitynet_s", "parse_s", "videos", "classes", "ground_truth", "predictions",
"map@0.5"}.

    python -m benchmarks.eval_tal
"""

from __future__ import annotations

import json
import time

import numpy as np

from raylab.eval.tal import evaluate_tal, parse_tal


def random_document(videos: int = 1000, classes: int = 20, per_video: int = 200, seed: int = 0) -> dict:
    """The evaluation JSON (docs/evaluation-tal.md) with jittered and random predictions."""
    rng = np.random.default_rng(seed)
    doc = {"ground_truth": [], "predictions": []}
    for v in range(videos):
        name = f"video_{v:05d}"
        kinds = rng.choice(classes, size=rng.integers(1, 3), replace=False)
        n = int(rng.integers(1, 16))
        starts = rng.uniform(0, 170, n)
        ends = starts + rng.uniform(1, 10, n)
        labels = rng.choice(kinds, n)
        doc["ground_truth"] += [{"video": name, "label": f"c{c}", "t_start": float(s), "t_end": float(e)}
                                for c, s, e in zip(labels, starts, ends)]
        half = per_video // 2
        pick = rng.integers(0, n, half)
        jitter = rng.normal(0, 1.5, (half, 2))  # [half, 2] seconds added to (start, end)
        p_start = np.r_[starts[pick] + jitter[:, 0], rng.uniform(0, 170, per_video - half)]
        p_end = np.r_[ends[pick] + jitter[:, 1], p_start[half:] + rng.uniform(1, 20, per_video - half)]
        p_end = np.maximum(p_end, p_start)  # a jittered end before its start becomes zero-length
        p_label = np.r_[labels[pick], rng.integers(0, classes, per_video - half)]
        scores = rng.random(per_video)
        doc["predictions"] += [{"video": name, "label": f"c{c}", "t_start": float(s), "t_end": float(e),
                                "score": float(p)} for c, s, e, p in zip(p_label, p_start, p_end, scores)]
    return doc


def main() -> None:
    doc = random_document()
    result = {}
    for preset in ("thumos14", "activitynet"):
        start = time.perf_counter()
        out = evaluate_tal(doc, preset=preset)
        result[f"{preset}_s"] = round(time.perf_counter() - start, 2)
        if preset == "thumos14":
            result["map@0.5"] = round(out["map"]["0.5"], 4)
    start = time.perf_counter()
    parse_tal(doc)
    result["parse_s"] = round(time.perf_counter() - start, 2)
    result.update(videos=1000, classes=20, ground_truth=len(doc["ground_truth"]),
                  predictions=len(doc["predictions"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
