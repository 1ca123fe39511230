"""How good are the pseudo-labels MGW trains on? Their quality by distance to the nearest labelled frame.

Draws the initial frames of a dataset's training split as a run does (`asl.initial_requests`: a
fraction of each video's frames, at random), builds every other frame's pseudo-label from them
(`data.targets.pseudo_label`: boxes interpolated between the two nearest labelled frames, the nearest
label where either has no actor) and compares it with the ground truth: how often the pseudo-label
says there is an actor where there is none or the reverse, and the box IoU (ACT's +1 pixel; each true
box against its best pseudo-label box) on frames where both have an actor. Beside each distance, the
MGW weight that frame gets (`proximity.mgw_weights`) for each sigma asked for, and how many of the
frames lie in a changed gap (between two labelled frames that show different actors,
`data.targets.in_changed_gap`: the frames `labels.changed_gaps=skip` gives weight 0) with how often the
actor's presence is wrong there and elsewhere; and how far the true boxes move from frame to frame
(the IoU of an actor's box with its own a few frames later). Where the labels carry masks (SynthActions,
J-HMDB), the IoU of the foreground a pseudo-label draws (`data.targets.render_foreground`, at the
video's own size) with the true one, for each `labels.pseudo_masks` rule: the nearest label's masks
moved onto the interpolated boxes, or copied where they are. No training.

The box IoU is that of the interpolated boxes, what a dataset of boxes (UCF-101-24) trains on.

    python -m benchmarks.pseudo_labels runs/learning/data/small-seed3/spatiotemporal --sigmas 1.3 2.6

Last line of output: JSON {"fraction", "seed", "true_box_iou_by_gap": {"1", ..., "5": mean IoU of a
training actor's true box with its own d frames later}, "by_distance": {"1", ..., "6+": {"frames",
"actor_presence_wrong", "box_iou_mean", "box_iou_ge_0.5", "mask_iou_mean": {"moved", "copied"} (null
without masks), "mgw_weight": {sigma: weight},
"changed_gap": {"frames", "actor_presence_wrong"}, "elsewhere": {"frames", "actor_presence_wrong"}}}}.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd

from raylab.asl import initial_requests
from raylab.data.annotations import load_dataset
from raylab.data.targets import PSEUDO_MASKS, group_labels, in_changed_gap, pseudo_label, render_foreground
from raylab.eval.boxes import iou2d
from raylab.oracle import reveal_frames
from raylab.proximity import mgw_weights, nearest_annotated_distance

FAR = 6  # distances from here on are pooled


def pseudo_label_quality(root: str, fraction: float, seed: int, sigmas: list[float]) -> dict:
    _, index, gt = load_dataset(root)
    train = index[index["split"] == "train"].reset_index(drop=True)
    labelled = group_labels(reveal_frames(gt, initial_requests(train, fraction, seed=seed)))
    every_frame = pd.DataFrame([(v, f) for v, n in zip(train["video_id"], train["num_frames"])
                                for f in range(n)], columns=["video_id", "frame"])
    truth = group_labels(reveal_frames(gt, every_frame))
    stats: dict[int, dict] = {}
    for video_id, n, hw in zip(train["video_id"], train["num_frames"], zip(train["height"], train["width"])):
        labels = labelled.get(video_id, {})
        annotated = np.array(sorted(labels), dtype=np.int64)
        frames = np.setdiff1d(np.arange(n), annotated)
        distances = np.minimum(nearest_annotated_distance(frames, annotated), FAR).astype(int)
        changed = in_changed_gap(labels, frames, annotated)
        for frame, d, gap in zip(frames, distances, changed):
            pseudo = pseudo_label(labels, int(frame), annotated)
            true = truth.get(video_id, {}).get(int(frame))
            has_pseudo, has_true = not (pseudo is None or pseudo.empty), not (true is None or true.empty)
            s = stats.setdefault(int(d), {"frames": 0, "wrong": 0, "ious": [],
                                          "mask_ious": {rule: [] for rule in PSEUDO_MASKS},
                                          "gap": [0, 0], "other": [0, 0]})  # [frames, presence wrong]
            s["frames"] += 1
            s["gap" if gap else "other"][0] += 1
            if has_pseudo != has_true:
                s["wrong"] += 1
                s["gap" if gap else "other"][1] += 1
            elif has_true:
                s["ious"] += list(iou2d(true.boxes, pseudo.boxes).max(axis=1))
                if true.masks and pseudo.masks:
                    true_fg = render_foreground(true, hw, hw).astype(bool)
                    for rule, ious in s["mask_ious"].items():
                        fg = render_foreground(pseudo_label(labels, int(frame), annotated, rule), hw, hw) > 0
                        ious.append((fg & true_fg).sum() / max((fg | true_fg).sum(), 1))
    by_distance = {
        (f"{d}+" if d == FAR else str(d)): {
            "frames": s["frames"],
            "actor_presence_wrong": round(s["wrong"] / s["frames"], 3),
            "box_iou_mean": round(float(np.mean(s["ious"])), 3) if s["ious"] else None,
            "box_iou_ge_0.5": round(float(np.mean(np.array(s["ious"]) >= 0.5)), 3) if s["ious"] else None,
            "mask_iou_mean": ({rule: round(float(np.mean(v)), 3) for rule, v in s["mask_ious"].items()}
                              if s["mask_ious"]["moved"] else None),
            "mgw_weight": {str(sigma): round(float(mgw_weights(np.array([d]), np.array([0]), sigma)[0]), 3)
                           for sigma in sigmas},
            **{name: {"frames": s[key][0], "actor_presence_wrong": round(s[key][1] / max(s[key][0], 1), 3)}
               for name, key in (("changed_gap", "gap"), ("elsewhere", "other"))},
        } for d, s in sorted(stats.items())}
    return {"fraction": fraction, "seed": seed, "true_box_iou_by_gap": true_box_iou_by_gap(gt, train),
            "by_distance": by_distance}


def true_box_iou_by_gap(gt: pd.DataFrame, train: pd.DataFrame) -> dict[str, float]:
    """How far the boxes move: the mean box IoU (ACT's +1 pixel) of each training actor's true box with
    its own true box 1, 2, ... FAR - 1 frames later, where it is in both frames. What a copy of a
    perfect label that many frames away would score, the ceiling of the pseudo-labels above."""
    ious: dict[int, list] = {d: [] for d in range(1, FAR)}
    for _, track in gt[gt["video_id"].isin(train["video_id"])].groupby(["video_id", "actor"]):
        boxes = dict(zip(track["frame"].astype(int), track[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)))
        for d in ious:
            ious[d] += [float(iou2d(box[None], boxes[f + d][None])[0, 0])
                        for f, box in boxes.items() if f + d in boxes]
    return {str(d): round(float(np.mean(v)), 3) for d, v in ious.items() if v}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", help="a raylab dataset directory (with dataset.json)")
    p.add_argument("--fraction", type=float, default=0.1,
                   help="share of each training video's frames labelled")
    p.add_argument("--seed", type=int, default=0, help="the run seed that draws the initial frames")
    p.add_argument("--sigmas", type=float, nargs="+", default=[1.3], help="MGW widths to show the weights of")
    args = p.parse_args()
    result = pseudo_label_quality(args.dataset, args.fraction, args.seed, args.sigmas)
    print(f"true box IoU with the same actor's box d frames later: {result['true_box_iou_by_gap']}")
    for d, s in result["by_distance"].items():
        print(f"distance {d:>2}: {s['frames']:5d} frames, presence wrong {s['actor_presence_wrong']:.3f}, "
              f"box IoU {s['box_iou_mean']}, >= 0.5 {s['box_iou_ge_0.5']}, mask IoU {s['mask_iou_mean']}, "
              f"MGW weight {s['mgw_weight']}; "
              f"{s['changed_gap']['frames']} in changed gaps, presence wrong there "
              f"{s['changed_gap']['actor_presence_wrong']:.3f}, "
              f"elsewhere {s['elsewhere']['actor_presence_wrong']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
