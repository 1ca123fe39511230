"""Training throughput (clips/s) of one cycle on Ray Train with 1 and 2 workers, on the same clips.

Each run trains the default detector on the clips around the labelled frames of the small SynthActions
set and reads clips/s off the per-epoch history (the first epoch, which starts the workers and fills
the stream, is left out). On a GPU machine pass --use-gpu to train with one GPU per worker. Last line of
output: JSON {"clips_per_s": {"1": ..., "2": ...}, "scaling_2_vs_1": ..., ...}.

    python -m benchmarks.train                       # CPU: 1 and 2 workers
    python -m benchmarks.train --use-gpu --workers 1 # GPU
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

import ray

from benchmarks.synth import DEMO_PIPELINE, VIDEOS_HELP, synth_overrides
from raylab.asl import training_dataset
from raylab.config import load_config
from raylab.data.stream import init_ray
from raylab.loop import open_run
from raylab.train import train_cycle


def clips_per_s(cfg, run_dir: Path) -> dict:
    data, store = open_run(cfg, run_dir)
    result = train_cycle(cfg, run_dir, 0, training_dataset(cfg, data, store, 0), len(data.classes))
    steady = result.history[1:] or result.history
    # each worker reports its own shard: the cluster's clips per epoch are clips x workers
    clips = sum(h["clips"] for h in steady) * cfg.train.num_workers
    return {"clips_per_s": clips / sum(h["seconds"] for h in steady), "clips_per_epoch":
            steady[0]["clips"] * cfg.train.num_workers, "epochs_timed": len(steady)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--videos", type=int, default=None, help=VIDEOS_HELP)
    parser.add_argument("--fraction", type=float, default=0.1, help="labelled fraction of training frames")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--use-gpu", action="store_true")
    args = parser.parse_args()

    init_ray(num_cpus=args.num_cpus)
    ray.data.DataContext.get_current().enable_progress_bars = False
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        base = load_config(DEMO_PIPELINE, [
            *synth_overrides(args.preset, args.videos, f"{tmp}/synth"),
            f"labels.init_fraction={args.fraction}", f"train.epochs={args.epochs}"])
        for n in args.workers:
            # CPU: the workers share num_cpus - 1 CPUs and one is left to the clip stream's decode tasks
            cpus = 1.0 if args.use_gpu else (args.num_cpus - 1) / n
            cfg = replace(base, train=replace(base.train, num_workers=n, cpus_per_worker=cpus,
                                              use_gpu=args.use_gpu))
            out[str(n)] = clips_per_s(cfg, Path(tmp) / f"run{n}")
    result = {"clips_per_s": {n: round(r["clips_per_s"], 2) for n, r in out.items()},
              "clips_per_epoch": out[str(args.workers[0])]["clips_per_epoch"],
              "epochs_timed": out[str(args.workers[0])]["epochs_timed"],
              "device": "gpu" if args.use_gpu else "cpu", "num_cpus": args.num_cpus, "preset": args.preset}
    if "1" in out and "2" in out:
        result["scaling_2_vs_1"] = round(out["2"]["clips_per_s"] / out["1"]["clips_per_s"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
