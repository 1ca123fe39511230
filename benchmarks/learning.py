"""Does the ASL detector learn? One training cycle of the default pipeline per labelled fraction and seed.

For each SynthActions seed (`data.synth_seed`: another data set), labelled fraction (the initial frames,
ASL Sec. 4: that share of each training video's frames) and run seed (which frames, initial weights,
clip order), one whole cycle of the default pipeline (raylab's defaults: small SynthActions, the small
detector, every cycle trained on at least `train.min_clips` clips) — train, calibrate the actionness
thresholds on the labelled training frames, evaluate on the test split — runs with `ray.in_process` (the
same steps as `raylab run`, without starting Ray: the numbers do not depend on it). Reports f-mAP@0.5,
v-mAP@0.5, video accuracy and training seconds per run, and the mean and spread per fraction.

    python -m benchmarks.learning                                  # the issue's grid (1-2 hours on 2 cores)
    python -m benchmarks.learning --fractions 0.01 --seeds 0 --synth-seeds 0          # one run

Last line of output: JSON {"runs": [{"synth_seed", "fraction", "seed", "labelled_frames", "frame_map@0.5",
"video_map@0.5", "video_accuracy", "actionness_threshold", "frame_actionness_threshold", "train_s",
"evaluate_s"}, ...], "summary": {fraction: {metric: [mean, std, n]}}}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from raylab.config import load_config
from raylab.loop import run_loop
from raylab.rundir import metric_value, read_metrics, read_state

METRICS = ("frame_map@0.5", "video_map@0.5", "video_accuracy")


def one_run(pipeline: str, synth_dir: Path, run_dir: Path, synth_seed: int, fraction: float, seed: int,
            extra: list[str]) -> dict:
    cfg = load_config(pipeline or None, [f"data.synth_dir={synth_dir}", f"data.synth_seed={synth_seed}",
                                 f"labels.init_fraction={fraction}", f"seed={seed}", "loop.cycles=1",
                                 "ray.in_process=true", *extra])
    run_loop(cfg, run_dir, progress=False)
    record = read_metrics(run_dir)[-1]
    seconds = read_state(run_dir)["seconds"]["0"]
    return {"synth_seed": synth_seed, "fraction": fraction, "seed": seed,
            "labelled_frames": record["labelled_frames"],
            "frame_map@0.5": metric_value(record, "frame_map@0.5"),
            "video_map@0.5": metric_value(record, "video_map@0.5"),
            "video_accuracy": record["video_accuracy"],
            "actionness_threshold": record["actionness_threshold"],
            "frame_actionness_threshold": record["frame_actionness_threshold"],
            "train_s": seconds["train"], "evaluate_s": seconds["evaluate"]}


def summarise(runs: list[dict]) -> dict:
    out = {}
    for fraction in sorted({r["fraction"] for r in runs}):
        rows = [r for r in runs if r["fraction"] == fraction]
        out[str(fraction)] = {m: [round(float(np.mean([r[m] for r in rows])), 4),
                                  round(float(np.std([r[m] for r in rows])), 4), len(rows)]
                              for m in (*METRICS, "train_s")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="", help="a pipeline file; default: raylab's defaults")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="run seeds of every fraction below 1 (100%% labels: see --full-seeds)")
    parser.add_argument("--full-seeds", type=int, default=1, metavar="K",
                        help="run seeds at 100%% labels: the first K of --seeds (every frame is labelled, "
                             "so the seed draws only the initial weights and the clip order; default 1)")
    parser.add_argument("--synth-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="more config overrides, as raylab run --set")
    parser.add_argument("--out", default="",
                        help="keep the data and run directories here (default: temporary)")
    args = parser.parse_args()

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.out or tmp)
        for synth_seed in args.synth_seeds:
            for fraction in args.fractions:
                for seed in (args.seeds if fraction < 1 else args.seeds[:args.full_seeds]):
                    run_dir = base / "runs" / f"synth{synth_seed}-f{fraction}-s{seed}"
                    runs.append(one_run(args.pipeline, base / "data", run_dir, synth_seed,
                                        fraction, seed, args.set))
                    print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"runs": runs, "summary": summarise(runs)}))


if __name__ == "__main__":
    main()
