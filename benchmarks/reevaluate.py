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

Last line of output: JSON {"runs": [{"run", "cycle", "evaluation", "frame_map@0.5", "video_map@0.5",
"video_accuracy", "actionness_threshold", "frame_actionness_threshold", "recorded": {"frame_map@0.5",
"video_map@0.5", "video_accuracy"}}, ...]}: "recorded" is what the run's own evaluation wrote.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from raylab.asl import evaluate_cycle
from raylab.config import ConfigError
from raylab.data.labels import LabelStore
from raylab.rundir import RunStateError, load_run, metric_value, read_metrics

METRICS = ("frame_map@0.5", "video_map@0.5")


def reevaluate(run: Path, cycle: int, overrides: list[str]) -> dict:
    data = load_run(run, overrides)
    store = LabelStore(data.paths.labels, index=data.index)
    later = store.to_pandas()["cycle"].max() if len(store) else cycle
    if later > cycle:
        raise RunStateError(f"{run}: its label store holds labels of cycle {later}; the calibration of "
                            f"cycle {cycle} would read them (re-evaluate the run's last cycle)")
    record = evaluate_cycle(data.cfg, data, store, cycle)
    recorded = next((r for r in read_metrics(run) if r["cycle"] == cycle), {})
    return {"run": str(run), "cycle": cycle, "evaluation": record["evaluation"],
            **{m: metric_value(record, m) for m in METRICS}, "video_accuracy": record["video_accuracy"],
            "actionness_threshold": record["actionness_threshold"],
            "frame_actionness_threshold": record["frame_actionness_threshold"],
            "recorded": {**{m: metric_value(recorded, m) if recorded else None for m in METRICS},
                         "video_accuracy": recorded.get("video_accuracy")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--cycle", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override of the runs' saved config, e.g. evaluation.flip=false")
    args = parser.parse_args()
    rows = []
    for run in args.runs:
        try:
            rows.append(reevaluate(run, args.cycle, args.set))
        except (RunStateError, ConfigError, FileNotFoundError) as e:
            sys.exit(f"error: {e}")
        row = rows[-1]
        recorded = row["recorded"]["frame_map@0.5"]
        recorded = "none" if recorded is None else f"{recorded:.3f}"
        print(f"{run}: f-mAP@0.5 {row['frame_map@0.5']:.3f} (recorded {recorded}), "
              f"v-mAP@0.5 {row['video_map@0.5']:.3f}, video accuracy {row['video_accuracy']:.2f}", flush=True)
    print(json.dumps({"runs": rows}))


if __name__ == "__main__":
    main()
