"""Evaluate trained ASL runs again, with the evaluation settings they were made with or others, and leave
their metrics as they are: the same checkpoints, so two evaluations of a run differ by nothing else.

For each run directory, the detector of `--cycle` is calibrated on the run's labelled training frames and
evaluated on the test split as `raylab run` does (`asl.evaluate_cycle`), with `--set` overrides of the
run's saved config (e.g. `evaluation.flip=false`). The run's label store must not hold labels of a later
cycle (the calibration reads every labelled frame): the benchmark runs of `benchmarks.learning`, one
cycle each, qualify.

A run saved before a setting existed is evaluated as it was made (`rundir.ADDED_KEYS`: a run made before
2026-12-04 has no `evaluation` section and is evaluated without mirroring and with a window of 1), so
to evaluate such a run with today's defaults, set them.

    python -m benchmarks.reevaluate runs/learning/runs/* --set evaluation.flip=true \\
        --set evaluation.actionness_window=3

`--test-folds K` also evaluates the same predictions on K parts of the test split: each class's test
videos in index order, cut into K runs of (nearly) equal length, part j the j-th run of every class. On
small SynthActions (7 then 14 more test videos per class, in that order) `--test-folds 3` gives the 42
videos that were its whole test split until 2026-12-05 as part 0, and the 84 added since as parts 1 and
2: how much a run's figures depend on which test videos it meets.

Last line of output: JSON {"runs": [{"run", "cycle", "evaluation", "frame_map@0.5", "video_map@0.5",
"video_accuracy", "actionness_threshold", "frame_actionness_threshold", "recorded": {"frame_map@0.5",
"video_map@0.5", "video_accuracy"}, "test_folds": [{"videos", "frame_map@0.5", "video_map@0.5",
"video_accuracy"}, ...]}, ...]}: "recorded" is what the run's own evaluation wrote; "test_folds" only with
`--test-folds`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from raylab.asl import cycle_record, predict_test
from raylab.config import ConfigError
from raylab.data.labels import LabelStore
from raylab.eval.predict import document_subset, video_accuracy
from raylab.eval.stad import evaluate_stad
from raylab.rundir import RunStateError, load_run, metric_value, read_metrics

METRICS = ("frame_map@0.5", "video_map@0.5")


def split_test_videos(test: pd.DataFrame, folds: int) -> list[pd.DataFrame]:
    """Each class's videos of `test` in index order cut into `folds` runs; part j: every class's j-th."""
    parts = [[] for _ in range(folds)]
    for label, videos in test.groupby("label", sort=True):
        if len(videos) < folds:
            raise ValueError(f"--test-folds {folds}: class {label} has {len(videos)} test videos")
        for part, chunk in zip(parts, np.array_split(np.arange(len(videos)), folds)):
            part.append(videos.iloc[chunk])
    return [pd.concat(p) for p in parts]


def reevaluate(run: Path, cycle: int, overrides: list[str], folds: int = 0) -> dict:
    data = load_run(run, overrides)
    store = LabelStore(data.paths.labels, index=data.index)
    later = store.to_pandas()["cycle"].max() if len(store) else cycle
    if later > cycle:
        raise RunStateError(f"{run}: its label store holds labels of cycle {later}; the calibration of "
                            f"cycle {cycle} would read them (re-evaluate the run's last cycle)")
    doc, calibration, test = predict_test(data.cfg, data, store, cycle)
    record = cycle_record(data.cfg, data, store, cycle, doc, calibration, test)
    recorded = next((r for r in read_metrics(run) if r["cycle"] == cycle), {})
    parts = []
    for part in split_test_videos(test, folds) if folds else []:
        metrics = {"metrics": evaluate_stad(document_subset(doc, part["video_id"]))}
        parts.append({"videos": len(part), **{m: metric_value(metrics, m) for m in METRICS},
                      "video_accuracy": video_accuracy(doc, part)})
    return {"run": str(run), "cycle": cycle, "evaluation": record["evaluation"],
            **{m: metric_value(record, m) for m in METRICS}, "video_accuracy": record["video_accuracy"],
            "actionness_threshold": record["actionness_threshold"],
            "frame_actionness_threshold": record["frame_actionness_threshold"],
            "recorded": {**{m: metric_value(recorded, m) if recorded else None for m in METRICS},
                         "video_accuracy": recorded.get("video_accuracy")},
            **({"test_folds": parts} if folds else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--cycle", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override of the runs' saved config, e.g. evaluation.flip=false")
    parser.add_argument("--test-folds", type=int, default=0, metavar="K",
                        help="also evaluate on K parts of the test split (each class's videos, in order)")
    args = parser.parse_args()
    if args.test_folds < 0:
        sys.exit(f"error: --test-folds must be >= 0, got {args.test_folds}")
    rows = []
    for run in args.runs:
        try:
            rows.append(reevaluate(run, args.cycle, args.set, args.test_folds))
        except (RunStateError, ConfigError, FileNotFoundError, ValueError) as e:
            sys.exit(f"error: {e}")
        row = rows[-1]
        recorded = row["recorded"]["frame_map@0.5"]
        recorded = "none" if recorded is None else f"{recorded:.3f}"
        print(f"{run}: f-mAP@0.5 {row['frame_map@0.5']:.3f} (recorded {recorded}), "
              f"v-mAP@0.5 {row['video_map@0.5']:.3f}, video accuracy {row['video_accuracy']:.2f}"
              + "".join(f"; part {j} ({p['videos']} videos): f-mAP@0.5 {p['frame_map@0.5']:.3f}"
                        for j, p in enumerate(row.get("test_folds", []))), flush=True)
    print(json.dumps({"runs": rows}))


if __name__ == "__main__":
    main()
