"""Where a trained ASL detector loses frame-mAP: classification, boxes, or frames without an actor.

Takes a run directory and a cycle and re-predicts the test split with that cycle's checkpoint, then
reports what a perfect part would give: the metrics as evaluated, with the true class substituted for
the predicted class probabilities, with the true class and no actionness threshold, with the true
presence (detections on exactly the frames that have an actor, in place of both actionness thresholds),
and with the true class and the true presence (what the boxes alone leave); the box IoU of
the largest connected component (at the run's calibrated foreground threshold) on every ground-truth
frame, and at other foreground thresholds; how the tubes' actionness threshold (set on labelled
training frames; frame detections have their own, `frame_actionness_threshold`) splits test frames with
and without an actor; and the box IoU on the training videos' actor
frames by distance to the nearest labelled frame (0: the labelled frames themselves). IoUs use ACT's
+1-pixel convention, as frame-mAP does.

    python -m benchmarks.diagnose runs/results/synth0-f1.0-s0 --cycle 0

Last line of output: JSON {"video_accuracy", "misclassified": {video: predicted class},
"actionness_threshold", "frame_actionness_threshold", "mask_threshold", "box_iou_mean", "box_iou_ge_0.5",
"box_iou_by_threshold",
"train_box_iou_by_distance": {"0", "1-3", "4+": [frames, mean IoU]}, "actionness": {"with_actor",
"without_actor", "with_actor_kept", "without_actor_kept", "labelled_training_frames": {"with_actor",
"without_actor"}}, "frame_map@0.5": {"predicted", "true_class", "true_class_no_threshold",
"true_presence", "true_class_true_presence"}, "video_map@0.5": {...}}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from raylab.data.labels import LabelStore
from raylab.eval.masks import actionness, component_box_ious, masks_to_detections
from raylab.eval.predict import ground_truth_document, predict_each_video
from raylab.eval.stad import evaluate_stad
from raylab.rundir import load_run, read_metrics
from raylab.train import MODEL_FILE, load_detector

# per variant (true class?, frames): the predicted or the true class; frames gated by the calibrated
# thresholds (False), by none (None), or exactly the frames with an actor (True: the true presence)
VARIANTS = {"predicted": (False, False), "true_class": (True, False), "true_class_no_threshold": (True, None),
            "true_presence": (False, True), "true_class_true_presence": (True, True)}
THRESHOLDS = (0.3, 0.4, 0.5, 0.6)  # foreground thresholds at which the test boxes are also measured
DISTANCES = (("0", 0, 0), ("1-3", 1, 3), ("4+", 4, np.inf))  # frames from the nearest labelled frame


def _boxes_by_frame(gt) -> dict[tuple[str, int], list]:
    boxes: dict[tuple[str, int], list] = {}
    for v, f, x1, y1, x2, y2 in gt[["video_id", "frame", "x1", "y1", "x2", "y2"]].itertuples(index=False):
        boxes.setdefault((v, int(f)), []).append([x1, y1, x2, y2])
    return boxes


def training_fit(data, model, cycle: int, mask_threshold: float) -> tuple[dict, dict]:
    """Box IoU on the training videos' actor frames, by distance to the nearest frame labelled for this
    cycle (does the detector fit its labelled frames, and does the fit reach the frames between them?),
    and the mean actionness of the labelled frames with and without an actor (the frames the actionness
    threshold is set on)."""
    cfg, size = data.cfg, (data.cfg.clips.height, data.cfg.clips.width)
    labels = LabelStore(data.paths.labels, index=data.index).to_pandas()
    labels = labels[labels["cycle"] <= cycle]  # the frames this cycle's detector was trained on
    labelled = {v: rows["frame"].to_numpy() for v, rows in labels.groupby("video_id")}
    boxes = _boxes_by_frame(data.gt[data.gt["video_id"].isin(data.train["video_id"])])
    distance, ious, scores, has_actor = [], [], [], []
    window = cfg.evaluation.actionness_window
    for row, fg, _ in predict_each_video(model, data.train, data.root, cfg.clips.length, size,
                                         cfg.clips.batch_size, "cpu", cfg.clips.stride, cfg.evaluation.flip):
        frames = [i for i in range(row.num_frames) if (row.video_id, i) in boxes]
        marks = labelled.get(row.video_id, np.array([], np.int64))
        scores += list(actionness(fg, window)[marks])
        has_actor += [(row.video_id, int(i)) in boxes for i in marks]
        distance += [np.abs(marks - i).min() if len(marks) else np.inf for i in frames]
        ious += list(component_box_ious(fg[frames], [boxes[(row.video_id, i)] for i in frames],
                                        (row.width / size[1], row.height / size[0]), (mask_threshold,))[:, 0])
    distance, ious = np.array(distance, np.float64), np.array(ious)
    scores, has_actor = np.array(scores), np.array(has_actor, bool)
    by_distance = {}
    for name, lo, hi in DISTANCES:
        near = (distance >= lo) & (distance <= hi)
        by_distance[name] = [int(near.sum()), float(ious[near].mean()) if near.any() else None]
    return by_distance, {"with_actor": float(scores[has_actor].mean()) if has_actor.any() else None,
                         "without_actor": float(scores[~has_actor].mean()) if (~has_actor).any() else None}


def diagnose(run: Path, cycle: int) -> dict:
    data = load_run(run)
    cfg = data.cfg
    record = next(r for r in read_metrics(run) if r["cycle"] == cycle)
    threshold = record.get("actionness_threshold", 0.0)  # the tubes'
    frame_threshold = record.get("frame_actionness_threshold", threshold)  # runs made before it: the same
    mask_threshold = record.get("mask_threshold", 0.5)  # runs made before it was calibrated used 0.5
    model = load_detector(data.paths.checkpoint_dir(cycle) / MODEL_FILE)
    test = data.index[data.index["split"] == "test"].reset_index(drop=True)
    gt = data.gt[data.gt["video_id"].isin(test["video_id"])]
    classes, size = data.classes, (cfg.clips.height, cfg.clips.width)
    docs = {v: ground_truth_document(test, gt, classes) for v in VARIANTS}
    for doc in docs.values():
        doc["frame_detections"], doc["tube_detections"] = [], []
    ious, scores, has_actor, hits = [], [], [], []
    misclassified = {}  # video -> the class it was given
    boxes = _boxes_by_frame(gt)  # the ground truth's boxes of each frame
    window = cfg.evaluation.actionness_window
    for row, fg, class_probs in predict_each_video(model, test, data.root, cfg.clips.length, size,
                                                cfg.clips.batch_size, "cpu", cfg.clips.stride,
                                                cfg.evaluation.flip, cfg.evaluation.class_pooling):
        predicted = int(np.argmax(class_probs))
        hits.append(predicted == int(row.label))
        if not hits[-1]:
            misclassified[row.video_id] = classes[predicted]
        scale = (row.width / size[1], row.height / size[0])
        targets = [boxes.get((row.video_id, i)) for i in range(row.num_frames)]
        actor = np.array([target is not None for target in targets], bool)
        true = np.eye(len(classes))[row.label]
        for variant, (true_class, presence) in VARIANTS.items():
            frames, cuts = np.arange(row.num_frames), (frame_threshold, threshold)
            if presence is None:  # no threshold: every frame with a component
                cuts = (0.0, 0.0)
            elif presence:  # exactly the frames with an actor, whatever their actionness
                frames, cuts = frames[actor], (0.0, 0.0)
            if not len(frames):
                continue
            f, t = masks_to_detections(row.video_id, frames, fg[frames], true if true_class else class_probs,
                                       scale_xy=scale, threshold=mask_threshold, top_k=len(classes),
                                       min_actionness=cuts[0], actionness_window=window,
                                       tube_min_actionness=cuts[1])
            docs[variant]["frame_detections"] += f
            docs[variant]["tube_detections"] += t
        # the box of every ground-truth frame, as if its actionness passed the threshold
        frame_actionness = actionness(fg, window)
        scores += list(frame_actionness)
        has_actor += list(actor)
        ious.append(component_box_ious(fg[actor], [t for t in targets if t is not None], scale,
                                       (mask_threshold, *THRESHOLDS)))
    scores, has_actor = np.array(scores), np.array(has_actor)
    by_threshold = np.concatenate(ious)
    ious = by_threshold[:, 0]
    metrics = {v: evaluate_stad(docs[v]) for v in VARIANTS}
    train_ious, train_actionness = training_fit(data, model, cycle, mask_threshold)
    return {
        "run": str(run), "cycle": cycle, "labelled_frames": record["labelled_frames"],
        "video_accuracy": float(np.mean(hits)), "misclassified": misclassified,
        "actionness_threshold": threshold, "frame_actionness_threshold": frame_threshold,
        "mask_threshold": mask_threshold,
        "box_iou_mean": float(ious.mean()), "box_iou_ge_0.5": float((ious >= 0.5).mean()),
        "box_iou_by_threshold": {str(t): float(m) for t, m in zip(THRESHOLDS, by_threshold[:, 1:].mean(0))},
        "train_box_iou_by_distance": train_ious,
        "actionness": {"with_actor": float(scores[has_actor].mean()),
                       "without_actor": float(scores[~has_actor].mean()),
                       "with_actor_kept": float((scores[has_actor] >= threshold).mean()),
                       "without_actor_kept": float((scores[~has_actor] >= threshold).mean()),
                       "labelled_training_frames": train_actionness},
        "frame_map@0.5": {v: metrics[v]["frame_map"]["0.5"] for v in VARIANTS},
        "video_map@0.5": {v: metrics[v]["video_map"]["0.5"] for v in VARIANTS},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--cycle", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(diagnose(args.run, args.cycle)))


if __name__ == "__main__":
    main()
