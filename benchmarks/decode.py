"""Clips/s through the Ray Data clip stream vs a plain decord loop over the same clips, in one run.

The plain loop decodes each clip with `read_frames` in this process (one core). The stream runs the
same clips through `clip_dataset` on a local Ray with --num-cpus CPUs (decode tasks, target rendering
included) and is consumed by this driver. Throughput per core used = clips/s divided by the cores
each side was given. Last line of output: JSON
{"stream_clips_per_s", "plain_clips_per_s", "ratio", ...} where ratio is the per-core ratio.

    python -m benchmarks.decode --preset small --num-cpus 2
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import ray

from benchmarks.synth import VIDEOS_HELP, synth_videos
from raylab.data.annotations import load_dataset
from raylab.data.clips import tile_clips
from raylab.data.stream import clip_dataset, clip_table, init_ray
from raylab.data.synthetic import generate
from raylab.data.targets import group_labels
from raylab.data.video import read_frames
from raylab.oracle import reveal_frames


def plain_loop(table, size) -> float:
    """Clips/s of decoding every clip of the table in this process."""
    paths, frames = table.column("path").to_pylist(), table.column("frames").to_pylist()
    start = time.perf_counter()
    for path, f in zip(paths, frames):
        read_frames(path, np.asarray(f), size)
    return len(paths) / (time.perf_counter() - start)


def rss_mb() -> float:
    """Resident memory of this process, MiB (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reader_memory(path: str, num_frames: int, clips: int, clip_len: int, size) -> dict:
    """RSS after 10 and after `clips` random clips of one long video: flat when readers are short-lived."""
    rng = np.random.default_rng(0)
    after = {}
    for i in range(1, clips + 1):
        start = int(rng.integers(0, max(1, num_frames - clip_len)))
        read_frames(path, np.arange(start, start + clip_len) % num_frames, size)
        if i in (10, clips):
            after[i] = round(rss_mb(), 1)
    return {"long_video_frames": num_frames, "rss_mb_after_10_clips": after[10],
            f"rss_mb_after_{clips}_clips": after[clips]}


def stream(table, size, clips_per_task: int, batch_size: int, sigma: float) -> float:
    """Clips/s of the Ray Data stream, consumed by the driver in batches of `batch_size` clips."""
    ds = clip_dataset(table, size, sigma, clips_per_task=clips_per_task)
    start = time.perf_counter()
    n = sum(len(b["video_id"]) for b in ds.iter_batches(batch_size=batch_size, batch_format="numpy"))
    elapsed = time.perf_counter() - start
    assert n == table.num_rows, (n, table.num_rows)
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=None, help="a dataset directory (default: generate SynthActions)")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--videos", type=int, default=None, help=VIDEOS_HELP)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--clip-len", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=8, help="clips per batch handed to the consumer")
    parser.add_argument("--clips-per-task", type=int, default=64, help="clips decoded per Ray Data task")
    parser.add_argument("--passes", type=int, default=4, help="times the dense tiling is repeated")
    parser.add_argument("--repeats", type=int, default=3, help="best of N passes for each side")
    args = parser.parse_args()

    tmp = None
    if args.root is None:
        tmp = tempfile.TemporaryDirectory()
        generate(tmp.name, preset=args.preset, seed=0, kinds=("spatiotemporal",),
                 videos=synth_videos(args.preset, args.videos))
        generate(tmp.name, preset=args.preset, seed=0, kinds=("temporal",))  # its longest video
        args.root = str(Path(tmp.name) / "spatiotemporal")
    long_root = Path(args.root).parent / "temporal"
    long_index = load_dataset(long_root)[1] if long_root.is_dir() else None
    meta, index, gt = load_dataset(args.root)
    clips = tile_clips(index, args.clip_len, 1)
    clips = pd.concat([clips] * args.passes, ignore_index=True)  # enough clips to reach steady state
    # targets from a 10% labelling so that the stream renders real pseudo-labels and MGW weights
    rng = np.random.default_rng(0)
    requests = {v: np.sort(rng.choice(n, max(1, n // 10), replace=False))
                for v, n in zip(index["video_id"], index["num_frames"])}
    labels = group_labels(reveal_frames(gt, requests))
    table = clip_table(clips, index, args.root, labels)
    size = (args.size, args.size)

    init_ray(address="", num_cpus=args.num_cpus)
    ray.data.DataContext.get_current().enable_progress_bars = False
    def streamed_pass(t):
        return stream(t, size, args.clips_per_task, args.batch_size, sigma=1.3)

    streamed_pass(table.slice(0, 4 * args.clips_per_task))  # warm up Ray's worker processes
    plain = max(plain_loop(table, size) for _ in range(args.repeats))
    streamed = max(streamed_pass(table) for _ in range(args.repeats))
    longest = (long_index if long_index is not None else index).sort_values("num_frames").iloc[-1]
    memory = reader_memory(longest["path"], int(longest["num_frames"]), 600, args.clip_len, size)
    result = {
        "stream_clips_per_s": round(streamed, 2),
        "plain_clips_per_s": round(plain, 2),
        "ratio": round((streamed / args.num_cpus) / plain, 3),
        "stream_cores": args.num_cpus,
        "plain_cores": 1,
        "clips": table.num_rows,
        "clip_len": args.clip_len,
        "clips_per_task": args.clips_per_task,
        "size": args.size,
        "preset": args.preset if tmp else args.root,
        **memory,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
