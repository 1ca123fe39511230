"""Seconds of the frame detections' actionness calibration (`predict.calibrate_frame_actionness`), which
evaluates frame-mAP@0.5 over the labelled training frames at up to 65 thresholds, on random data.

70% of the frames hold one actor (actionness drawn from Beta(8, 1), a box jittered around the target);
the others hold none (Beta(3, 3)). Every frame has a box and a detection per class. The default sizes
are the small SynthActions set at 100% labels (4,500 frames, 6 classes) and 100,000 labelled frames of
24 classes (UCF-101-24's classes). Last line of output: JSON {"runs": [{"frames", "classes", "seconds",
"threshold"}, ...]}.

    python -m benchmarks.calibrate
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from raylab.eval.predict import calibrate_frame_actionness


def labelled_frames(frames: int, classes: int, seed: int = 0) -> tuple:
    """The arguments of `calibrate_frame_actionness` for `frames` random labelled frames."""
    rng = np.random.default_rng(seed)
    actor = rng.random(frames) < 0.7
    scores = np.where(actor, rng.beta(8, 1, frames), rng.beta(3, 3, frames))
    target = np.array([10.0, 10.0, 50.0, 50.0])
    boxes = target + rng.normal(0, 3, (frames, 4))
    targets = [target[None] if a else np.zeros((0, 4)) for a in actor]
    labels = [np.full(len(t), i % classes) for i, t in enumerate(targets)]
    return (scores, np.ones(frames, bool), boxes, rng.random(frames), rng.dirichlet(np.ones(classes), frames),
            targets, labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["4500x6", "100000x24"], metavar="FRAMESxCLASSES")
    args = parser.parse_args()
    runs = []
    for size in args.sizes:
        frames, classes = (int(x) for x in size.split("x"))
        inputs = labelled_frames(frames, classes)
        start = time.perf_counter()
        threshold = calibrate_frame_actionness(*inputs)
        seconds = time.perf_counter() - start
        runs.append({"frames": frames, "classes": classes, "seconds": round(seconds, 2),
                     "threshold": round(threshold, 4)})
        print(f"{frames} labelled frames, {classes} classes: {seconds:.2f} s (threshold {threshold:.3f})",
              flush=True)
    print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    main()
