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

from raylab.config import CLASS_POOLING
from raylab.data.clips import tile_clips
from raylab.data.stream import clip_table, decode_clips
from raylab.eval.masks import (
    MASK_THRESHOLDS,
    actionness,
    best_mask_threshold,
    best_target_ious,
    calibrate_actionness,
    component_boxes,
    masks_to_detections,
)
from raylab.eval.stad import frame_ap
from raylab.models.detector import clips_to_tensor


def video_class_probs(clip_probs: np.ndarray, pooling: str = "mean") -> np.ndarray:
    """A video's class probabilities [C] from those of its clips [K, C]: their mean ("mean"), or each
    class's highest clip probability, divided by their sum ("max": the video is of the class that one of
    its clips shows most surely)."""
    if pooling == "mean":
        return clip_probs.mean(axis=0)
    if pooling == "max":
        peak = clip_probs.max(axis=0)
        return peak / peak.sum()
    raise ValueError(f"class pooling must be one of {', '.join(CLASS_POOLING)}, got {pooling!r}")


@torch.no_grad()
def predict_video(model, table, size: tuple[int, int], num_frames: int, batch: int, device,
                  flip: bool = False, class_pooling: str = "mean") -> tuple:
    """Foreground probabilities [N, H, W] of every frame and the class probabilities [C] of one video.

    A frame's probabilities are the mean over every clip of `table` that holds it (the dense tiling's
    last clip of a phase overlaps the one before it, and a short phase repeats its last frame), and with
    `flip` over each clip's mirror image as well, mirrored back: test-time augmentation with the
    mirroring training uses (`train.flip`); the class probabilities are pooled over the same views
    (`video_class_probs` with `class_pooling`).

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
    video_probs = video_class_probs(np.concatenate(class_probs), class_pooling)
    return fg / np.maximum(views, 1.0)[:, None, None], video_probs


def video_accuracy(doc: dict, index: pd.DataFrame) -> float:
    """Share of the videos of `index` (with a class label) whose predicted class is their label."""
    known = index[index["label"] >= 0]
    hits = [doc["predicted_classes"].get(v) == int(c) for v, c in zip(known["video_id"], known["label"])]
    return float(np.mean(hits)) if hits else float("nan")


def document_subset(doc: dict, video_ids) -> dict:
    """The evaluation document `doc` restricted to the videos `video_ids`: their ground truth, their
    detections and their predicted classes."""
    keep = set(video_ids)
    return {"labels": doc["labels"], "videos": {v: x for v, x in doc["videos"].items() if v in keep},
            "frame_detections": [d for d in doc["frame_detections"] if d["video"] in keep],
            "tube_detections": [d for d in doc["tube_detections"] if d["video"] in keep],
            "predicted_classes": {v: c for v, c in doc.get("predicted_classes", {}).items() if v in keep}}


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
                       size: tuple[int, int], batch: int, device, stride: int = 1, flip: bool = False,
                       class_pooling: str = "mean"):
    """(index row, foreground probabilities, class probabilities) of every video of `index`, in order.

    `stride`: the step between a clip's frames, as in training (`clips.stride`): the detector sees the
    motion at the speed it learned it; each phase of the tiling predicts its own frames. `flip`: average
    with the mirror images, `class_pooling`: how the clips' class probabilities make the video's
    (`predict_video`)."""
    model.eval()
    for row in index.itertuples(index=False):
        clips = tile_clips(pd.DataFrame([row._asdict()]), length, stride)
        table = clip_table(clips, index, video_root)
        yield row, *predict_video(model, table, size, int(row.num_frames), batch, device, flip, class_pooling)


@dataclass(frozen=True)
class Calibration:
    """What turns a detector's foreground probabilities into detections, the thresholds set on labelled
    training frames (never on the test split). A frame's actionness is the median of its highest
    foreground probability over `actionness_window` frames (`masks.actionness`): a frame below
    `min_actionness` is left out of the tubes, one below `frame_min_actionness` gets no frame detection
    (`masks.masks_to_detections`); a frame's box is that of the largest component of the pixels >=
    `mask_threshold`; with `flip` the probabilities are averaged with those of the mirrored clips, and
    `class_pooling` makes the video's class probabilities from its clips' (`predict_video`). The window,
    flip and pooling are chosen, not calibrated: the calibration frames are predicted as the test frames
    are."""

    min_actionness: float = 0.0
    mask_threshold: float = 0.5
    actionness_window: int = 1
    flip: bool = False
    frame_min_actionness: float = 0.0
    class_pooling: str = "mean"


FRAME_MAP_IOU = 0.5  # the frame-mAP the frame detections' actionness threshold is calibrated for (ACT)
FRAME_CANDIDATES = 64  # at most this many actionness thresholds are tried (`calibrate_frame_actionness`)


def calibrate_frame_actionness(scores: np.ndarray, has_box: np.ndarray, boxes: np.ndarray,
                               fg_mean: np.ndarray, class_probs: np.ndarray, targets: list,
                               target_labels: list, candidates: int = FRAME_CANDIDATES) -> float:
    """The actionness threshold for frame detections that gives the highest frame-mAP@0.5 (ACT protocol,
    `stad.frame_ap`) over labelled (training) frames, each frame scored as `masks.masks_to_detections`
    scores it (a detection per class, class probability x mean foreground of the component).

    The candidates are 0 (detect on every frame) and the cuts halfway between neighbouring distinct
    actionness values of the frames with a box, at most `candidates` of them, evenly spaced in rank.
    Ties go to the higher threshold (fewer detections on frames without an actor). 0.0 when no labelled
    frame holds an actor.

    Args:
        scores: float [N] `masks.actionness` of the labelled frames; has_box bool [N], boxes float [N, 4],
            fg_mean float [N]: `masks.component_boxes` at the calibrated foreground threshold;
            class_probs: float [N, C] the class probabilities of each frame's video.
        targets: N arrays [K, 4] of labelled boxes (K = 0: a labelled frame without an actor);
            target_labels: N int arrays [K], their classes.
    """
    scores, has_box = np.asarray(scores, np.float64), np.asarray(has_box, bool)
    class_probs = np.asarray(class_probs, np.float64)
    n, n_classes = class_probs.shape
    sizes = [len(np.asarray(t).reshape(-1, 4)) for t in targets]
    if not sum(sizes):
        return 0.0
    gt_frame = np.repeat(np.arange(n), sizes)
    gt = {"video": gt_frame, "frame": np.zeros_like(gt_frame),
          "label": np.concatenate([np.asarray(lab, np.int64).reshape(-1) for lab in target_labels]),
          "box": np.concatenate([np.asarray(t, np.float64).reshape(-1, 4) for t in targets])}
    held = np.flatnonzero(has_box)  # a detection per class on every frame with a box
    det_frame = np.repeat(held, n_classes)
    dets = {"video": det_frame, "frame": np.zeros_like(det_frame),
            "label": np.tile(np.arange(n_classes), held.size),
            "box": np.asarray(boxes, np.float64).reshape(-1, 4)[det_frame],
            "score": (class_probs[held] * np.asarray(fg_mean, np.float64)[held, None]).ravel()}
    distinct = np.unique(scores[held])
    cuts = (distinct[1:] + distinct[:-1]) / 2
    if cuts.size > candidates:
        cuts = cuts[np.unique(np.linspace(0, cuts.size - 1, candidates).round().astype(int))]
    best, best_map = 0.0, -np.inf
    for cut in np.concatenate([[0.0], cuts]):
        keep = scores[det_frame] >= cut
        aps = frame_ap(gt, {k: v[keep] for k, v in dets.items()}, n_classes, (FRAME_MAP_IOU,))[FRAME_MAP_IOU]
        mean = float(np.nanmean(aps))
        if mean >= best_map - 1e-12:
            best, best_map = float(cut), mean
    return best


def calibrate_detector(model, index: pd.DataFrame, labels: pd.DataFrame, video_root: str | Path,
                       length: int, size: tuple[int, int], batch: int = 8, device="cpu",
                       stride: int = 1, actionness_window: int = 1, flip: bool = False,
                       frame_actionness: str = "frame_map", class_pooling: str = "mean") -> Calibration:
    """`model`'s thresholds (`Calibration`), set on labelled training frames: the foreground threshold
    (`masks.best_mask_threshold`: the best mean box IoU of the labelled actor frames), the tubes'
    actionness threshold (`masks.calibrate_actionness`: the best balanced accuracy of "has an actor"),
    and the frame detections' (`calibrate_frame_actionness`: the best frame-mAP of the labelled frames;
    with `frame_actionness` "tube", the tubes' threshold, as before 2026-12-04).

    Args:
        index: the videos that hold the labelled frames.
        labels: label-store rows (video_id, frame, boxes, box_labels): a frame with no box is a
            labelled negative.
        stride: the clips' frame step (`predict_each_video`).
        actionness_window, flip, class_pooling: how frames are predicted and called (`Calibration`).
    """
    by_video = dict(tuple(labels.groupby("video_id")))
    scores, targets, target_labels, class_probs = [], [], [], []
    components = [[] for _ in MASK_THRESHOLDS]  # per foreground threshold: (has, boxes, fg_mean) per video
    for row, fg, video_probs in predict_each_video(model, index[index["video_id"].isin(by_video)], video_root,
                                                   length, size, batch, device, stride, flip, class_pooling):
        rows = by_video[row.video_id]
        marks = rows["frame"].to_numpy(np.int64)
        scores.append(actionness(fg, actionness_window)[marks])  # the window reaches unlabelled neighbours
        targets += [np.stack(b).astype(np.float64) if len(b) else np.zeros((0, 4)) for b in rows["boxes"]]
        target_labels += [np.asarray(b, np.int64) for b in rows["box_labels"]]
        class_probs.append(np.broadcast_to(video_probs, (len(marks), len(video_probs))))
        for found, t in zip(components, MASK_THRESHOLDS):
            found.append(component_boxes(fg[marks], t, (row.width / size[1], row.height / size[0])))
    if not scores:
        return Calibration(actionness_window=actionness_window, flip=flip, class_pooling=class_pooling)
    scores = np.concatenate(scores)
    has_actor = np.array([len(t) > 0 for t in targets], bool)
    found = [[np.concatenate(parts) for parts in zip(*per_video)] for per_video in components]
    actor_targets = [t for t in targets if len(t)]
    box_ious = np.stack([best_target_ious(has[has_actor], boxes[has_actor], actor_targets)
                         for has, boxes, _ in found], axis=1)
    mask_threshold = best_mask_threshold(box_ious)
    tubes = calibrate_actionness(scores, has_actor)
    frames = tubes
    if frame_actionness == "frame_map":
        has, boxes, fg_mean = found[MASK_THRESHOLDS.index(mask_threshold)]
        frames = calibrate_frame_actionness(scores, has, boxes, fg_mean, np.concatenate(class_probs), targets,
                                            target_labels)
    return Calibration(tubes, mask_threshold, actionness_window, flip, frames, class_pooling)


def predict_dataset(model, index: pd.DataFrame, gt: pd.DataFrame, classes: list[str], video_root: str | Path,
                    length: int, size: tuple[int, int], batch: int = 8, device="cpu",
                    calibration: Calibration = Calibration(), stride: int = 1) -> dict:
    """Predict every video of `index` and return the full evaluation document (see docs/evaluation.md),
    plus "predicted_classes": {video_id: the class of the highest video class probability}.

    `calibration`: how frames are predicted and the actionness and foreground thresholds
    (`calibrate_detector` sets them on training frames; the default detects on every frame, with pixels
    >= 0.5); `stride`: the clips' frame step (`predict_each_video`).
    """
    doc = ground_truth_document(index, gt, classes)
    doc["frame_detections"], doc["tube_detections"], doc["predicted_classes"] = [], [], {}
    for row, fg, class_probs in predict_each_video(model, index, video_root, length, size, batch, device,
                                                   stride, calibration.flip, calibration.class_pooling):
        doc["predicted_classes"][row.video_id] = int(np.argmax(class_probs))
        scale = (row.width / size[1], row.height / size[0])
        # a scored detection per class, as detectors report them: a misclassified video still ranks
        # its true class by that class's probability
        frame_dets, tube_dets = masks_to_detections(row.video_id, np.arange(row.num_frames), fg, class_probs,
                                                    scale_xy=scale, threshold=calibration.mask_threshold,
                                                    top_k=len(classes),
                                                    min_actionness=calibration.frame_min_actionness,
                                                    actionness_window=calibration.actionness_window,
                                                    tube_min_actionness=calibration.min_actionness)
        doc["frame_detections"] += frame_dets
        doc["tube_detections"] += tube_dets
    return doc
