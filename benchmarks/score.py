"""Frames/s of MC-dropout scoring (T = 10): shared encoder vs T full passes, and the actor pool vs a loop.

1. shared vs full: the same decoded clips, one process, one torch thread: `mc_forward` (encoder once,
   decoder T times) against `mc_forward_full` (T full passes).
2. pool vs plain, on the same 2 cores: a plain loop in one process (decode then score each batch, torch
   with 2 threads) against the Ray Data pipeline of `raylab score` (decode tasks + an actor pool of 2
   scorers with 1 torch thread each, on a local Ray with 2 CPUs), timed from its first scored batch.
Frames/s counts scored frames (every frame of the dense tiling once; shared vs full counts clip
frames). Last line of output: JSON {"shared_vs_full_ratio", "pool_vs_plain_ratio", "frames_per_s", ...}.

    python -m benchmarks.score
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.synth import DEMO_PIPELINE, VIDEOS_HELP, synth_overrides
from raylab.config import load_config
from raylab.data.clips import tile_clips
from raylab.data.stream import clip_table, decode_clips, init_ray, tile_dataset, tiling_videos
from raylab.loop import open_run
from raylab.models.detector import Detector, clips_to_tensor
from raylab.models.mc import enable_mc_dropout, mc_forward, mc_forward_full
from raylab.score import MCScorer, missing_ranges, score_dataset
from raylab.train import MODEL_FILE, save_detector


def shared_vs_full(model, batches: list[dict], trials: int) -> dict:
    """Frames/s of both MC paths over the same decoded batches (one torch thread)."""
    torch.set_num_threads(1)
    out = {}
    for name, fn in (("shared", mc_forward), ("full", mc_forward_full)):
        start, frames = time.perf_counter(), 0
        with torch.no_grad():
            for i, batch in enumerate(batches):
                fn(model, clips_to_tensor(batch["clip"]), trials, seed=i)
                frames += batch["frames"].size
        out[name] = frames / (time.perf_counter() - start)
    return out


def plain_loop(table, checkpoint: Path, cfg, out: Path) -> float:
    """Frames/s of decoding and scoring every clip in this process (torch with 2 threads)."""
    torch.set_num_threads(2)
    c = cfg.clips
    scorer = MCScorer(str(checkpoint), cfg.score.trials, cfg.score.tau, str(out), c.batch_size,
                      c.clips_per_task)
    size, b = (c.height, c.width), c.batch_size
    start, frames = time.perf_counter(), 0
    for i in range(0, table.num_rows, b):
        frames += len(scorer.score(decode_clips(table.slice(i, b), size, cfg.labels.sigma))["frame"])
    return frames / (time.perf_counter() - start)


def pool(videos: dict, clips: int, checkpoint: Path, cfg, out: Path) -> float:
    """Frames/s of the Ray Data decode + actor pool pipeline of `raylab score` (shards written to
    `out`), over the first `clips` clips of the dense tiling.

    Timed from the first scored block on: each dataset starts its own actors (loading torch and the
    model), a one-off cost the plain loop also pays outside its timing.
    """
    c = cfg.clips
    ranges = missing_ranges(clips, c.clips_per_task, [])
    data = tile_dataset(videos, ranges, (c.height, c.width), num_cpus=cfg.ray.decode_num_cpus)
    records = iter(score_dataset(data, checkpoint, cfg, out).iter_batches(batch_size=None))
    next(records)
    start = time.perf_counter()
    frames = sum(int(r["frames"].sum()) for r in records)
    return frames / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--videos", type=int, default=None, help=VIDEOS_HELP)
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--clips", type=int, default=320, help="clips scored by each side")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(DEMO_PIPELINE, [
            *synth_overrides(args.preset, args.videos, f"{tmp}/synth"), "labels.init_fraction=0.0001",
            f"score.trials={args.trials}", "score.actors=2", "score.cpus_per_actor=0.75",
            "ray.decode_num_cpus=0.5", "clips.clips_per_task=16"])
        data, store = open_run(cfg, Path(tmp) / "run")
        root, meta, index, train = data.root, data.meta, data.index, data.train
        torch.manual_seed(0)
        model = Detector(cfg.detector, len(meta["classes"]))
        checkpoint = Path(tmp) / MODEL_FILE
        save_detector(checkpoint, model)
        c = cfg.clips
        table = clip_table(tile_clips(train, c.length, c.stride).head(args.clips), index, root)
        batches = [decode_clips(table.slice(i, c.batch_size), (c.height, c.width), 1.3)
                   for i in range(0, table.num_rows, c.batch_size)]

        mc = shared_vs_full(enable_mc_dropout(model), batches, args.trials)
        plain = plain_loop(table, checkpoint, cfg, Path(tmp))
        init_ray(num_cpus=2)
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        videos = tiling_videos(train, root, store.labelled_frames(), c.length, c.stride)
        (Path(tmp) / "shards").mkdir()
        pooled = pool(videos, table.num_rows, checkpoint, cfg, Path(tmp) / "shards")
    print(json.dumps({
        "shared_vs_full_ratio": round(mc["shared"] / mc["full"], 3),
        "pool_vs_plain_ratio": round(pooled / plain, 3),
        "frames_per_s": round(pooled, 2),
        "shared_frames_per_s_1_thread": round(mc["shared"], 2),
        "full_frames_per_s_1_thread": round(mc["full"], 2),
        "plain_frames_per_s": round(plain, 2), "trials": args.trials, "clips": table.num_rows,
        "clip_len": c.length, "size": c.height, "cores": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
