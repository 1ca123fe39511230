"""The main job on an embedded default, until the active-learning loop lands.

Generates (or reuses) a SynthActions set, labels an initial random fraction of the training frames with
the simulated oracle into the run's label store, and streams the training clips (around labelled frames,
with pseudo-labels and MGW weights) and the dense scoring tiling through Ray Data, printing what it did.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from raylab.config import Config
from raylab.data.clips import tile_clips
from raylab.data.stream import init_ray
from raylab.loop import clip_stream, open_run, training_dataset

log = logging.getLogger(__name__)


def _consume(name: str, ds, batch_size: int) -> dict:
    """Iterate a clip dataset to the end; clips, seconds and target statistics."""
    start, clips, fg, annotated, weight = time.perf_counter(), 0, [], 0, []
    for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
        clips += len(batch["video_id"])
        fg.append(batch["fg"].mean())
        annotated += int(batch["annotated"].sum())
        weight.append(batch["weight"].mean())
    seconds = time.perf_counter() - start
    return {"stream": name, "clips": clips, "seconds": round(seconds, 2),
            "clips_per_s": round(clips / max(seconds, 1e-9), 1),
            "annotated_frames_seen": annotated,
            "mean_foreground": round(float(np.mean(fg)) if fg else 0.0, 4),
            "mean_mgw_weight": round(float(np.mean(weight)) if weight else 0.0, 4)}


def run_demo(cfg: Config, run_dir: Path) -> list[dict]:
    """Run the pre-loop main job and print one line per stream; returns the printed records."""
    root, meta, index, gt, train, store = open_run(cfg, run_dir)
    frames_total = int(train["num_frames"].sum())
    print(f"dataset {root}: {len(index)} videos ({len(train)} train), {len(meta['classes'])} classes; "
          f"labelled {len(store)} of {frames_total} training frames "
          f"({store.labelled_fraction(frames_total):.1%}), cost {store.cost():.0f} clicks")

    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    c = cfg.clips
    streams = {
        "train (clips around labelled frames)": training_dataset(cfg, root, index, train, store, cycle=0),
        "score (dense tiling of the training videos)": clip_stream(
            cfg, tile_clips(train, c.length, c.stride), root, index, store),
    }
    records = []
    for name, ds in streams.items():
        records.append(_consume(name, ds, c.batch_size))
        print(" ".join(f"{k}={v}" for k, v in records[-1].items()))
    print(f"run directory: {run_dir} (config.yaml, labels/)")
    return records
