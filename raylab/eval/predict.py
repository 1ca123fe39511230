"""Detector inference over whole videos, and the ground truth + predictions document `evaluate_stad` reads.

Each video is tiled densely (`clips.tile_clips`), a frame's foreground probabilities are the mean over
the clips that hold it (and over their mirror images, with `flip`), and the per-frame foreground
probabilities and the clip-averaged class probabilities become per-frame boxes and a tube
(`masks.masks_to_detections`). Plain torch in one process; the scalable
path for large sets is the scoring actor pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from raylab.data.clips import tile_clips
from raylab.data.stream import clip_table, decode_clips
from raylab.eval.masks import (
    MASK_THRESHOLDS,
    actionness,
    best_mask_threshold,
    calibrate_actionness,
    component_box_ious,
    masks_to_detections,
)
from raylab.models.detector import clips_to_tensor


@torch.no_grad()
def predict_video(model, table, size: tuple[int, int], num_frames: int, batch: int, device,
                  flip: bool = False) -> tuple:
    """Foreground probabilities [N, H, W] of every frame and mean class probabilities [C] of one video.

    A frame's probabilities are the mean over every clip of `table` that holds it (the dense tiling's
    last clip of a phase overlaps the one before it, and a short phase repeats its last frame), and with
    `flip` over each clip's mirror image as well, mirrored back: test-time augmentation with the
    mirroring training uses (`train.flip`); the class probabilities are averaged over the same views.

    Args:
        table: the video's clip table (`stream.clip_table` of its dense tiling).
    """
    fg = np.zeros((num_frames, *size), dtype=np.float32)
    views = np.zeros(num_frames, dtype=np.float32)  # clip slots (and mirrors) that predicted each frame
    class_probs = []
    for i in range(0, table.num_rows, batch):
        decoded = decode_clips(table.slice(i, batch), size, sigma=1.0)  # targets are not used here
        x = clips_to_tensor(decoded["clip"], device)
        if flip:
            x = torch.cat([x, x.flip(-1)])  # one pass over the clips and their mirror images
        out = model(x)  # conditioned on the predicted class
        probs = torch.sigmoid(out["fg_logits"]).float().cpu().numpy()  # [B or 2B, T, H, W]
        if flip:
            n = len(decoded["frames"])
            probs = np.concatenate([probs[:n], probs[n:, ..., ::-1]])
        for frames, p in zip(list(decoded["frames"]) * (2 if flip else 1), probs):
            np.add.at(fg, frames, p)
            np.add.at(views, frames, 1.0)
        class_probs.append(out["class_probs"].float().cpu().numpy())
    return fg / np.maximum(views, 1.0)[:, None, None], np.concatenate(class_probs).mean(axis=0)


def video_accuracy(doc: dict, index: pd.DataFrame) -> float:
    """Share of the videos of `index` (with a class label) whose predicted class is their label."""
    known = index[index["label"] >= 0]
    hits = [doc["predicted_classes"].get(v) == int(c) for v, c in zip(known["video_id"], known["label"])]
    return float(np.mean(hits)) if hits else float("nan")


def ground_truth_document(index: pd.DataFrame, gt: pd.DataFrame, classes: list[str]) -> dict:
    """The "labels" and "videos" parts of the evaluation JSON (frames 1-based, one tube per actor)."""
    videos = {}
    by_video = dict(tuple(gt.groupby("video_id"))) if len(gt) else {}
    for row in index.itertuples(index=False):
        tubes = []
        rows = by_video.get(row.video_id)
        if rows is not None:
            for _, actor in rows.sort_values(["actor", "frame"]).groupby("actor"):
                boxes = np.column_stack([actor["frame"].to_numpy() + 1,
                                         actor[["x1", "y1", "x2", "y2"]].to_numpy(np.float64)])
                tubes.append({"label": int(actor["label"].iloc[0]), "boxes": boxes.tolist()})
        videos[row.video_id] = {"nframes": int(row.num_frames), "width": int(row.width),
                                "height": int(row.height), "tubes": tubes}
    return {"labels": list(classes), "videos": videos}


def predict_each_video(model, index: pd.DataFrame, video_root: str | Path, length: int,
                       size: tuple[int, int], batch: int, device, stride: int = 1, flip: bool = False):
    """(index row, foreground probabilities, class probabilities) of every video of `index`, in order.

    `stride`: the step between a clip's frames, as in training (`clips.stride`): the detector sees the
    motion at the speed it learned it; each phase of the tiling predicts its own frames. `flip`: average
    with the mirror images (`predict_video`)."""
    model.eval()
    for row in index.itertuples(index=False):
        clips = tile_clips(pd.DataFrame([row._asdict()]), length, stride)
        table = clip_table(clips, index, video_root)
        yield row, *predict_video(model, table, size, int(row.num_frames), batch, device, flip)


@dataclass(frozen=True)
class Calibration:
    """What turns a detector's foreground probabilities into detections, the thresholds set on labelled
    training frames (never on the test split): frames whose actionness (the median over
    `actionness_window` frames, `masks.actionness`) is below `min_actionness` get no detection, and a
    frame's box is that of the largest component of the pixels >= `mask_threshold`; with `flip` the
    probabilities are averaged with those of the mirrored clips (`predict_video`). The window and flip
    are chosen, not calibrated: the calibration frames are predicted as the test frames are."""

    min_actionness: float = 0.0
    mask_threshold: float = 0.5
    actionness_window: int = 1
    flip: bool = False


def calibrate_detector(model, index: pd.DataFrame, labels: pd.DataFrame, video_root: str | Path,
                       length: int, size: tuple[int, int], batch: int = 8, device="cpu",
                       stride: int = 1, actionness_window: int = 1, flip: bool = False) -> Calibration:
    """`model`'s actionness threshold (`masks.calibrate_actionness`) and foreground threshold
    (`masks.best_mask_threshold`: the best mean box IoU of the labelled actor frames), set on labelled
    training frames.

    Args:
        index: the videos that hold the labelled frames.
        labels: label-store rows (video_id, frame, boxes): a frame with no box is a labelled negative.
        stride: the clips' frame step (`predict_each_video`).
        actionness_window, flip: how frames are predicted and called (`Calibration`).
    """
    by_video = dict(tuple(labels.groupby("video_id")))
    scores, has_actor, box_ious = [], [], []
    for row, fg, _ in predict_each_video(model, index[index["video_id"].isin(by_video)], video_root, length,
                                         size, batch, device, stride, flip):
        rows = by_video[row.video_id]
        marks = rows["frame"].to_numpy(np.int64)
        frames = fg[marks]
        scores.append(actionness(fg, actionness_window)[marks])  # the window reaches unlabelled neighbours
        actor = np.array([len(b) > 0 for b in rows["boxes"]], dtype=bool)
        has_actor.append(actor)
        box_ious.append(component_box_ious(frames[actor], [np.stack(b) for b in rows["boxes"][actor]],
                                           (row.width / size[1], row.height / size[0]), MASK_THRESHOLDS))
    if not scores:
        return Calibration(actionness_window=actionness_window, flip=flip)
    return Calibration(calibrate_actionness(np.concatenate(scores), np.concatenate(has_actor)),
                       best_mask_threshold(np.concatenate(box_ious)), actionness_window, flip)


def predict_dataset(model, index: pd.DataFrame, gt: pd.DataFrame, classes: list[str], video_root: str | Path,
                    length: int, size: tuple[int, int], batch: int = 8, device="cpu",
                    calibration: Calibration = Calibration(), stride: int = 1) -> dict:
    """Predict every video of `index` and return the full evaluation document (see docs/evaluation.md),
    plus "predicted_classes": {video_id: the class of the highest mean clip probability}.

    `calibration`: how frames are predicted and the actionness and foreground thresholds
    (`calibrate_detector` sets them on training frames; the default detects on every frame, with pixels
    >= 0.5); `stride`: the clips' frame step (`predict_each_video`).
    """
    doc = ground_truth_document(index, gt, classes)
    doc["frame_detections"], doc["tube_detections"], doc["predicted_classes"] = [], [], {}
    for row, fg, class_probs in predict_each_video(model, index, video_root, length, size, batch, device,
                                                   stride, calibration.flip):
        doc["predicted_classes"][row.video_id] = int(np.argmax(class_probs))
        scale = (row.width / size[1], row.height / size[0])
        # a scored detection per class, as detectors report them: a misclassified video still ranks
        # its true class by that class's probability
        frame_dets, tube_dets = masks_to_detections(row.video_id, np.arange(row.num_frames), fg, class_probs,
                                                    scale_xy=scale, threshold=calibration.mask_threshold,
                                                    top_k=len(classes),
                                                    min_actionness=calibration.min_actionness,
                                                    actionness_window=calibration.actionness_window)
        doc["frame_detections"] += frame_dets
        doc["tube_detections"] += tube_dets
    return doc
