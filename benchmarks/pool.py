"""Large pools: score N frames with the `raylab score` path, then select from the shards; driver memory
and throughput against N.

The pool is cheap to build: V = N / 64 index rows, each a video of its own (video id "pool/0000123"),
all pointing at 4 small mp4 files (64 frames of 32×32, a moving square). What is under test is the
pipeline, not the model: a tiny detector (widths 8, 16; linear head), clips of 8 frames at 32×32, T = 2
MC-dropout trials. For each size, in a process of its own (so that its peak memory is its own):

1. `score.score_cycle`: Ray Data decode tasks make and decode the clips of the dense tiling, an actor
   pool of 2 MC-dropout scorers commits one shard per block of clips (a local Ray with 2 CPUs).
   frames_per_s is the mid-run rate: scored frames per second between the shards that bring the step
   to 10% and to 60% of its clips (score.MID_RUN). first_shard_frames_per_s counts from the first
   committed shard to the end: it includes the last blocks, which the actors score with both CPUs once
   decoding has ended, a fixed-size tail that is a larger share of a small pool.
2. `asl.select_step`: apu-global picks 1% of the frames, reading the shards by column
   (`score.read_score_columns`). select_s is its wall time, the read included.

driver_peak_rss_mb is the size's driver process peak RSS (ru_maxrss: Ray, torch, the index, the score
arrays selection reads; driver_peak_rss_scoring_mb the same before selection); actor_peak_rss_mb the
largest scoring actor's peak RSS, which counts the pages of Ray's shared object store the actor has
touched, and actor_anon_rss_mb its largest anonymous RSS seen at the end of a call (what it holds).
rss_ratio and throughput_ratio compare the largest size with the smallest. other_load is the share of
the machine's CPU time that processes outside the benchmark used while a size was scored
(benchmarks/scale.py's OtherLoad: 0.25 is half a core of 2). Last line of output: JSON
{"sizes": {"100000": {...}, "800000": {...}}, "rss_ratio", "throughput_ratio", ...}.

    python -m benchmarks.pool                          # 100k and 800k frames: about 3.5 minutes on 2 cores
    python -m benchmarks.pool --sizes 1000000 10000000 # on a cluster node with more CPUs (--num-cpus)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FRAMES_PER_VIDEO = 64
FILES = 4


def make_videos(root: Path, size: int) -> None:
    """FILES mp4 files of FRAMES_PER_VIDEO frames: a bright square moving right at different heights."""
    import numpy as np

    from raylab.data.video import write_video

    (root / "videos").mkdir(parents=True)
    for k in range(FILES):
        frames = np.full((FRAMES_PER_VIDEO, size, size, 3), 20, dtype=np.uint8)
        side, y = size // 4, (k * size // FILES) % (size - size // 4)
        for t in range(FRAMES_PER_VIDEO):
            x = t % (size - side)
            frames[t, y:y + side, x:x + side] = 230
        write_video(root / "videos" / f"{k}.mp4", frames, fps=25)


def pool_index(frames: int, size: int):
    import pandas as pd

    v = frames // FRAMES_PER_VIDEO
    return pd.DataFrame({"video_id": [f"pool/{i:07d}" for i in range(v)],
                         "path": [f"videos/{i % FILES}.mp4" for i in range(v)],
                         "num_frames": FRAMES_PER_VIDEO, "fps": 25.0, "height": size, "width": size,
                         "label": 0, "split": "train"})


def one_size(args) -> dict:
    """Score and select a pool of args.one frames in this process (the driver); returns its figures."""
    os.environ["OMP_NUM_THREADS"] = "1"  # before Ray starts: every actor and task runs one torch thread
    import pandas as pd
    import ray
    import ray.data
    import torch

    from benchmarks.scale import OtherLoad
    from raylab.asl import initial_requests, select_step
    from raylab.config import load_config
    from raylab.data.labels import LabelStore
    from raylab.data.schema import GT_BOXES_SCHEMA
    from raylab.models.detector import Detector
    from raylab.oracle import reveal_frames
    from raylab.rundir import RunData, RunPaths
    from raylab.score import SUMMARY_FILE, score_cycle
    from raylab.train import MODEL_FILE, save_detector

    root, run = Path(args.root), Path(args.run)
    s = args.size
    cfg = load_config("pipelines/smoke.yaml", [
        f"data.root={root}", "clips.length=8", f"clips.height={s}", f"clips.width={s}",
        f"clips.clips_per_task={args.clips_per_task}", f"clips.batch_size={args.batch_size}",
        "detector.widths=[8, 16]", "detector.depth=1", "detector.temporal_strides=[1, 1]",
        "detector.head=linear", f"score.trials={args.trials}", f"score.actors={args.actors}",
        f"score.cpus_per_actor={args.cpus_per_actor}", f"ray.decode_num_cpus={args.decode_cpus}",
        f"ray.num_cpus={args.num_cpus}", "loop.strategy=apu-global", "loop.step_fraction=0.01"])
    index = pool_index(args.one, s)
    paths = RunPaths(run)
    data = RunData(cfg, paths, root, {"classes": ["square", "other"]}, index,
                   GT_BOXES_SCHEMA.empty_table().to_pandas())
    store = LabelStore(paths.labels)  # 0.1% of the frames labelled (labelled negatives: no ground truth)
    store.append(reveal_frames(data.gt, initial_requests(data.train, 0.001, 0)), cycle=0, source="init")
    torch.manual_seed(0)
    paths.checkpoint_dir(0).mkdir(parents=True)
    save_detector(paths.checkpoint_dir(0) / MODEL_FILE, Detector(cfg.detector, 2))

    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    start = time.perf_counter()
    with OtherLoad() as load:
        out = score_cycle(cfg, data, store, 0)
    score_s = time.perf_counter() - start
    scoring_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = json.loads((out / SUMMARY_FILE).read_text())
    start = time.perf_counter()
    select_step(cfg, data, store, 0)
    select_s = time.perf_counter() - start
    picked = pd.read_parquet(paths.selection(0))
    shards = sorted(out.glob("*.parquet"))
    ray.shutdown()
    return {"frames_per_s": round(summary["mid_frames_per_s"], 1),
            "first_shard_frames_per_s": round(summary["frames_per_s"], 1),
            "driver_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "driver_peak_rss_scoring_mb": round(scoring_rss, 1),
            "actor_peak_rss_mb": round(summary["actor_peak_rss_mb"], 1),
            "actor_anon_rss_mb": round(summary["actor_anon_rss_mb"], 1),
            "shards": len(shards), "shard_mb": round(sum(p.stat().st_size for p in shards) / 2**20, 2),
            "select_s": round(select_s, 2), "frames": summary["frames_scored"], "clips": summary["clips"],
            "score_s": round(score_s, 1), "first_shard_s": round(summary["first_shard_s"], 1),
            "selected": len(picked), "videos": len(index), "other_load": round(load.share, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 800_000],
                        help="pool sizes (frames)")
    parser.add_argument("--size", type=int, default=32, help="clip height and width (pixels)")
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus-per-actor", type=float, default=0.75)
    parser.add_argument("--decode-cpus", type=float, default=0.5)
    parser.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    parser.add_argument("--clips-per-task", type=int, default=256, help="clips per block (= per shard)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: one size, in a child process
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--run", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(args)))
        return

    wall, load_before = time.perf_counter(), os.getloadavg()
    sizes = sorted(set(args.sizes))
    result: dict = {"sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pool"
        make_videos(root, args.size)
        for n in sizes:
            cmd = [sys.executable, "-m", "benchmarks.pool", "--one", str(n), "--root", str(root),
                   "--run", str(Path(tmp) / f"run{n}")]
            for flag in ("size", "trials", "actors", "cpus_per_actor", "decode_cpus", "num_cpus",
                         "clips_per_task", "batch_size"):
                cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"size {n} failed:\n{proc.stderr[-4000:]}")
            result["sizes"][str(n)] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{n} frames: {result['sizes'][str(n)]}", flush=True)
    small, large = result["sizes"][str(sizes[0])], result["sizes"][str(sizes[-1])]
    result.update(
        rss_ratio=round(large["driver_peak_rss_mb"] / small["driver_peak_rss_mb"], 3),
        throughput_ratio=round(large["frames_per_s"] / small["frames_per_s"], 3),
        throughput_ratio_from_first_shard=round(
            large["first_shard_frames_per_s"] / small["first_shard_frames_per_s"], 3),
        trials=args.trials, clip=[8, args.size, args.size], actors=args.actors, num_cpus=args.num_cpus,
        cores=os.cpu_count(), clips_per_task=args.clips_per_task,
        loadavg_1min=[round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        wall_s=round(time.perf_counter() - wall, 1))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
