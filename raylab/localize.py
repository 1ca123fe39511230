"""AL-STAL's Ray work: the localizer's training cycle, MC-dropout video scores and pseudo-labels, evaluation.

What train.py and score.py are to ASL's detector, this module is to the AL-STAL localizer
(raylab/models/localizer.py):

- `training_windows`: every training video tiled into windows of `alstal.window` snippets with half
  overlap, each carrying its segments in snippets relative to the window; a Ray Data stream whose
  decode tasks read only each window's rows of the feature file.
- `train_localizer_cycle`: a Ray Train cycle (`train.fit_cycle`, `train.worker_loop`), plain-torch
  `train_epoch`; `save_localizer` / `load_localizer`.
- `score_videos`: a Ray Data actor pool, one whole video per model call (the localizer is fully
  convolutional): p̃ of the eval-mode pass (the paper; `alstal.passes: mc`: the mean of MC-dropout
  passes) -> TPE or TCI -> the video score, and from the same eval-mode pass the detections above
  `alstal.pseudo_threshold` as pseudo-labels.
- `predict_videos` / `evaluate_videos`: plain torch in one process, mAP at tIoU (`eval.tal`).

Units. Feature i of a video covers snippet [i, i + 1) and starts at frame i * snippet_stride:
seconds = x * snippet_stride / fps, x = t * fps / snippet_stride (`features.snippets_to_seconds`,
`features.seconds_to_snippets`).

Tables. feats: video_id, path (absolute .npy, float32 [T, D]), snippets (T), dim (D), fps,
snippet_stride. Training segments: video_id, t_start, t_end (seconds), label (class index), source.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import zlib
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from raylab.acquisition.temporal import video_scores
from raylab.config import ALSTALConfig, Config, LocalizerConfig
from raylab.data.stream import dataset_from_blocks, decode_features, quiet_per_epoch
from raylab.eval.tal import evaluate_tal
from raylab.features import seconds_to_snippets, snippets_to_seconds
from raylab.losses import localizer_loss
from raylab.models.localizer import Localizer, decode, localizer_targets, location_grid, per_level
from raylab.models.mc import enable_mc_dropout, trial_rng
from raylab.train import CycleResult, base_loop_config, fit_cycle, worker_loop

log = logging.getLogger(__name__)

KEEP_INSIDE = 0.5  # a segment stays in a window when this fraction of min(its length, the window's) is inside


# ---------------------------------------------------------------- training windows


def window_starts(snippets: int, window: int) -> list[int]:
    """First snippet of each window tiling a video: a hop of window // 2 (half overlap), the last
    window moved back to end on the video's last snippet; one window at 0 for a video of <= `window`."""
    if snippets <= window:
        return [0]
    starts = list(range(0, snippets - window + 1, max(window // 2, 1)))
    if starts[-1] + window < snippets:
        starts.append(snippets - window)
    return starts


def clip_segments(segments: np.ndarray, labels: np.ndarray, start: int, stop: int):
    """A video's segments (snippets [M, 2]) as seen by the window of real snippets [start, stop).

    Each segment is clipped to the window and shifted to its start. It is kept when the part inside is
    at least KEEP_INSIDE x min(segment length, stop - start): a segment cut down to a sliver is dropped
    (that sliver is background in this window; half-overlapping windows hold any segment of up to
    half a window whole, and a long one mostly, in another window), while a segment longer than the
    window is kept where it fills at least half of it.

    Returns:
        float32 [m, 2] (start, end) relative to `start`; int64 [m] labels.
    """
    segments = np.asarray(segments, np.float64).reshape(-1, 2)
    inside = np.clip(segments, start, stop) - start  # [M, 2]
    kept = inside[:, 1] - inside[:, 0]
    need = KEEP_INSIDE * np.minimum(segments[:, 1] - segments[:, 0], stop - start)
    keep = (kept > 0) & (kept >= need)
    return inside[keep].astype(np.float32), np.asarray(labels, np.int64)[keep]


def window_table(cfg: Config, feats: pd.DataFrame, segments: pd.DataFrame, videos: Iterable[str],
                 seed: int) -> pd.DataFrame:
    """The training windows (metadata only), in an order shuffled with `seed`.

    Args:
        cfg: alstal.window (W snippets per window).
        feats: the features table; segments: the training segments (seconds); videos: the training
            video ids (a labelled video without segments trains as background).

    Returns:
        one row per window: video_id, path, start, stop (real snippets [start, stop)), frames int [W]
        (start.., a short video's last snippet repeated as padding), valid bool [W] (False on padding),
        segments float32 [m, 2] (snippets relative to start; `clip_segments`), labels int64 [m].
    """
    w = cfg.alstal.window
    videos = list(dict.fromkeys(videos))
    meta = feats.set_index("video_id")
    missing = sorted(set(videos) - set(meta.index))
    if missing:
        raise ValueError(f"training videos without features: {missing[:5]} ({len(missing)}); "
                         "extract them or leave them out of the training set")
    strays = sorted(set(segments["video_id"]) - set(videos))
    if strays:
        raise ValueError(f"segments of videos that are not training videos: {strays[:5]} ({len(strays)})")
    if len(segments) and (segments["label"] < 0).any():
        bad = segments[segments["label"] < 0].iloc[0]
        raise ValueError(f"video {bad['video_id']!r}: segment label {bad['label']} is not a class index")
    by_video = dict(tuple(segments.groupby("video_id"))) if len(segments) else {}
    rows = []
    for vid in videos:
        m = meta.loc[vid]
        t = int(m["snippets"])
        seg = by_video.get(vid, segments.iloc[:0])
        snip = seconds_to_snippets(seg[["t_start", "t_end"]].to_numpy(), m["fps"], m["snippet_stride"])
        for s in window_starts(t, w):
            stop = min(s + w, t)
            frames = np.minimum(np.arange(s, s + w), t - 1)
            rel, lab = clip_segments(np.clip(snip, 0, t), seg["label"].to_numpy(), s, stop)
            rows.append((vid, m["path"], s, stop, frames, np.arange(w) < stop - s, rel, lab))
    table = pd.DataFrame(rows, columns=["video_id", "path", "start", "stop", "frames", "valid",
                                        "segments", "labels"])
    order = np.random.default_rng(seed).permutation(len(table))
    return table.iloc[order].reset_index(drop=True)


def decode_windows(batch: pa.Table, max_segments: int) -> dict[str, np.ndarray]:
    """Read the features of a batch of window rows (`stream.decode_features`: only the window's rows of
    the memory-mapped file) and pad the segments to `max_segments`.

    Returns:
        video_id object [B]; start int64 [B]; frames int32 [B, W]; valid bool [B, W];
        features float32 [B, W, D] (zeros on padding, as the localizer pads);
        segments float32 [B, M, 2]; labels int64 [B, M] (-1 = padding).
    """
    out = decode_features(batch)
    out["valid"] = out.pop("owned")
    out["features"][~out["valid"]] = 0.0
    segments = np.zeros((batch.num_rows, max_segments, 2), np.float32)
    labels = np.full((batch.num_rows, max_segments), -1, np.int64)
    flat = batch.column("segments").to_pylist()  # per window: 2m floats
    for i, (s, lab) in enumerate(zip(flat, batch.column("labels").to_pylist())):
        segments[i, : len(lab)] = np.reshape(s, (-1, 2))
        labels[i, : len(lab)] = lab
    out.update(start=batch.column("start").to_numpy().astype(np.int64), segments=segments, labels=labels)
    return out


def _arrow_windows(table: pd.DataFrame) -> pa.Table:
    return pa.table({
        "video_id": table["video_id"].tolist(), "path": table["path"].tolist(),
        "start": pa.array(table["start"], pa.int64()), "stop": pa.array(table["stop"], pa.int64()),
        "frames": [np.asarray(f, np.int32) for f in table["frames"]],
        "owned": [np.asarray(v, bool) for v in table["valid"]],  # decode_features' name for `valid`
        "segments": pa.array([np.asarray(s, np.float32).ravel() for s in table["segments"]],
                             pa.list_(pa.float32())),
        "labels": pa.array([np.asarray(lab, np.int64) for lab in table["labels"]], pa.list_(pa.int64())),
    })


def training_windows(cfg: Config, feats: pd.DataFrame, segments: pd.DataFrame, videos: Iterable[str],
                     seed: int):
    """A Ray Data dataset of decoded training windows (`window_table`, `decode_windows`), streamed.

    Decode tasks take `clips.clips_per_task` windows each and `ray.decode_num_cpus` CPUs.
    """
    table = window_table(cfg, feats, segments, videos, seed)
    max_segments = max([len(lab) for lab in table["labels"]] + [1])
    arrow = _arrow_windows(table)
    per_task = cfg.clips.clips_per_task
    blocks = [arrow.slice(i, per_task) for i in range(0, arrow.num_rows, per_task)] or [arrow]
    return quiet_per_epoch(dataset_from_blocks(blocks, cfg.ray.in_process).map_batches(
        decode_windows, batch_size=None, batch_format="pyarrow", fn_kwargs={"max_segments": max_segments},
        num_cpus=cfg.ray.decode_num_cpus))


# ---------------------------------------------------------------- training


def window_targets(batch: dict, levels: int, size_base: float) -> dict[str, torch.Tensor]:
    """`localizer_targets` of a batch of decoded windows; locations centred on padding are ignored (-1).

    Returns: cls int64 [B, N], segments float [B, N, 2] (N locations of a window of W snippets).
    """
    width = batch["valid"].shape[1]
    keep = batch["labels"] >= 0  # [B, M]
    targets = localizer_targets([s[k] for s, k in zip(batch["segments"], keep)],
                                [lab[k] for lab, k in zip(batch["labels"], keep)], width, levels, size_base)
    centers = location_grid(width, levels)["centers"]  # [N]
    real = torch.as_tensor(batch["valid"].sum(1))[:, None]  # [B, 1] real snippets of each window
    targets["cls"] = torch.where(centers[None] < real, targets["cls"], -1)
    return targets


def train_epoch(model, batches: Iterable[dict], optimizer, device, amp: bool) -> dict[str, float]:
    """One pass over `batches` (decoded windows); returns mean loss terms and the window count."""
    module = getattr(model, "module", model)  # unwrap DDP
    levels, size_base, num_classes = module.cfg.levels, module.cfg.size_base, module.num_classes
    model.train()
    sums: dict[str, float] = {}
    windows = 0
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else nullcontext()
    for batch in batches:
        if batch["labels"].max(initial=-1) >= num_classes:
            raise ValueError(f"segment label {batch['labels'].max()} in a batch of windows (first video "
                             f"{batch['video_id'][0]!r}), but the localizer has {num_classes} classes")
        x = torch.as_tensor(batch["features"]).transpose(1, 2).to(device)  # [B, D, W]
        targets = {k: v.to(device) for k, v in window_targets(batch, levels, size_base).items()}
        with autocast:
            outputs = model(x)
        outputs = {k: v.float() if v.is_floating_point() else v for k, v in outputs.items()}
        terms = localizer_loss(outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimizer.step()
        n = x.shape[0]
        windows += n
        for key, value in terms.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach()) * n
    return {**{k: v / max(windows, 1) for k, v in sums.items()}, "windows": windows}


def save_localizer(path: Path, model, **extra) -> None:
    """Save a localizer (DDP-wrapped or not): state dict, LocalizerConfig as a dict, num_classes, `extra`."""
    module = getattr(model, "module", model)
    torch.save({"model": module.state_dict(), "num_classes": module.num_classes,
                "localizer": dataclasses.asdict(module.cfg), **extra}, path)


def load_localizer(path: Path, device: str | torch.device = "cpu") -> Localizer:
    """The localizer saved by `save_localizer`, in eval mode."""
    state = torch.load(path, map_location=device, weights_only=True)
    model = Localizer(LocalizerConfig(**state["localizer"]), state["num_classes"])
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def _warm_start(model: Localizer, path: str) -> None:
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise ValueError(f"{path}: the previous cycle's localizer does not fit this one (localizer.* or the "
                         f"number of classes changed?): {e}") from e


def train_func(config: dict) -> None:
    """Ray Train worker loop of the localizer (runs on every worker)."""
    torch.manual_seed(config["seed"])  # the same initial weights on every rank
    model = Localizer(LocalizerConfig(**config["localizer"]), config["num_classes"])
    worker_loop(config, model, train_epoch, save_localizer, _warm_start)


def train_localizer_cycle(cfg: Config, run_dir: Path, cycle: int, dataset, num_classes: int) -> CycleResult:
    """Train the localizer of `cycle` on `training_windows`; weights in checkpoints/cycle=K/model.pt.

    Warm-starts from checkpoints/cycle=K-1/model.pt when `train.warm_start` is set and it exists.
    AdamW (train.lr, train.weight_decay), batches of clips.batch_size windows, `localizer_loss`.
    """
    if cfg.localizer.feature_dim < 1:
        raise ValueError("localizer.feature_dim is 0: set it to the features' D (the feats table's dim) "
                         "before training")
    loop_config = {**base_loop_config(cfg, run_dir, cycle), "num_classes": num_classes,
                   "localizer": dataclasses.asdict(cfg.localizer)}
    return fit_cycle(cfg, run_dir, cycle, train_func, loop_config, {"train": dataset})


# ---------------------------------------------------------------- inference (plain torch)


def video_seed(video_id: str) -> int:
    """The MC-dropout seed of a video: its scores depend neither on the pool size nor on retries."""
    return zlib.crc32(str(video_id).encode())


def _video_tensor(path: str, device) -> torch.Tensor:
    """A video's whole feature sequence as the localizer's input [1, D, T]."""
    return torch.as_tensor(np.load(path).astype(np.float32, copy=False)).T[None].to(device)


def detections(outputs: dict, alstal: ALSTALConfig) -> dict[str, np.ndarray]:
    """Soft-NMS detections of one video: segments float64 [K, 2] (snippets), labels int64 [K], scores [K]."""
    det = decode(outputs, sigma=alstal.nms_sigma, top_k=alstal.top_k)[0]
    return {"segments": det["segments"].double().cpu().numpy().reshape(-1, 2),
            "labels": det["labels"].cpu().numpy().astype(np.int64),
            "scores": det["scores"].double().cpu().numpy()}


@torch.no_grad()
def mc_class_probs(model: Localizer, feats: list[torch.Tensor], trials: int, seed: int) -> list[np.ndarray]:
    """p̃ averaged over `trials` dropout samples of `decode` (the encoder's pyramid `feats` computed once):
    float64 [T_l, C] per pyramid level, for one video. Trial i draws its masks from seed + i."""
    enable_mc_dropout(model)
    total = 0.0
    for i in range(trials):
        with trial_rng(seed + i, feats[0].device):
            out = model.decode(feats)
        total = total + out["class_probs"][0].double()  # [N, C]
    model.eval()
    return [p.cpu().numpy() for p in per_level(total / trials, out["level"], dim=0)]


@torch.no_grad()
def score_video(model: Localizer, x: torch.Tensor, video_id: str, trials: int, alstal: ALSTALConfig):
    """The video's acquisition score and its eval-mode detections, from one encoder pass.

    Args:
        x: the whole video's features [1, D, T]. alstal: score (tpe | tci | random), aggregation,
            radius, regions, nms_sigma, top_k, passes (deterministic: p̃ of the eval-mode pass, as
            the paper; mc: the mean over `trials` MC-dropout passes).

    Returns:
        (score: float, NaN for random; `detections` in snippets).
    """
    model.eval()
    feats = model.encode(x)  # deterministic: the only dropout is in decode
    outputs = model.decode(feats)
    found = detections(outputs, alstal)
    if alstal.score == "random":
        return math.nan, found
    if alstal.passes == "deterministic":  # the paper: p̃ of the one eval-mode pass
        levels = per_level(outputs["class_probs"][0], outputs["level"], dim=0)
        probs = [p.double().cpu().numpy() for p in levels]
    else:  # raylab's own option: the mean of `trials` MC-dropout passes
        probs = mc_class_probs(model, feats, trials, video_seed(video_id))
    table = video_scores({video_id: probs}, alstal.score, alstal.aggregation, alstal.radius, alstal.regions)
    return float(table["score"].iloc[0]), found


# ---------------------------------------------------------------- scoring on an actor pool


class LocalizerScorer:
    """`map_batches` callable: one localizer per actor (loaded once); each row is one whole video."""

    def __init__(self, checkpoint: str, trials: int, alstal: ALSTALConfig, use_gpu: bool = False):
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = load_localizer(Path(checkpoint), self.device)
        self.trials, self.alstal = trials, alstal

    def __call__(self, batch: dict) -> pa.Table:
        cols = {k: [] for k in ("video_id", "score", "t_start", "t_end", "label", "segment_score")}
        for vid, path, fps, stride in zip(batch["video_id"], batch["path"], batch["fps"],
                                          batch["snippet_stride"]):
            score, det = score_video(self.model, _video_tensor(path, self.device), vid, self.trials,
                                     self.alstal)
            pseudo = det["scores"] >= self.alstal.pseudo_threshold
            seconds = snippets_to_seconds(det["segments"][pseudo], fps, stride)
            for key, value in zip(cols, (vid, score, seconds[:, 0], seconds[:, 1], det["labels"][pseudo],
                                         det["scores"][pseudo])):
                cols[key].append(value)
        lists = {k: pa.array(cols[k], pa.list_(pa.int64() if k == "label" else pa.float64()))
                 for k in ("t_start", "t_end", "label", "segment_score")}
        score = pa.array(cols["score"], pa.float64())
        return pa.table({"video_id": cols["video_id"], "score": score, **lists})


def _video_rows(feats: pd.DataFrame, video_ids: Sequence[str]) -> pd.DataFrame:
    """The feats rows of `video_ids`, in that order; errors for duplicates and videos without features."""
    ids = list(video_ids)
    if len(set(ids)) < len(ids):
        raise ValueError("video_ids repeat a video")
    missing = sorted(set(ids) - set(feats["video_id"]))
    if missing:
        raise ValueError(f"videos without features: {missing[:5]} ({len(missing)})")
    return feats.set_index("video_id").loc[ids].reset_index()


def score_videos(cfg: Config, feats: pd.DataFrame, checkpoint: Path, video_ids: Sequence[str]):
    """Acquisition scores and pseudo-labels of `video_ids` with the localizer of `checkpoint`.

    A pool of `score.actors` actors (score.cpus_per_actor / gpus_per_actor each); every video draws its
    dropout masks from `video_seed`, so the result does not depend on the pool size or on retries.

    Returns:
        scores: DataFrame video_id, score (float64; NaN for alstal.score random), in `video_ids` order;
        pseudo: DataFrame video_id, t_start, t_end (seconds), label (int64), score: the eval-mode
        detections after Soft-NMS with score >= alstal.pseudo_threshold.
    """
    import ray.data

    rows = _video_rows(feats, video_ids)[["video_id", "path", "fps", "snippet_stride"]]
    if rows.empty:
        return (pd.DataFrame({"video_id": pd.Series(dtype=object), "score": pd.Series(dtype=np.float64)}),
                _pseudo_frame([], [], [], [], []))
    s = cfg.score
    if s.retry_on_errors and not cfg.ray.in_process:
        ray.data.DataContext.get_current().actor_task_retry_on_errors = True
    per_task = max(1, min(cfg.clips.batch_size, math.ceil(len(rows) / s.actors)))  # every actor gets work
    blocks = [rows.iloc[i : i + per_task] for i in range(0, len(rows), per_task)]
    out = dataset_from_blocks(blocks, cfg.ray.in_process).map_batches(
        LocalizerScorer,
        fn_constructor_kwargs={"checkpoint": str(Path(checkpoint).resolve()), "trials": s.trials,
                               "alstal": cfg.alstal, "use_gpu": s.gpus_per_actor > 0},
        batch_size=per_task, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=s.actors),
        num_cpus=s.cpus_per_actor, num_gpus=s.gpus_per_actor or None,
    ).to_pandas()
    out = out.set_index("video_id").loc[rows["video_id"]].reset_index()
    n = out["label"].map(len).to_numpy()
    pseudo = _pseudo_frame(np.repeat(out["video_id"].to_numpy(object), n),
                           *(_flat(out[k]) for k in ("t_start", "t_end", "label", "segment_score")))
    # video_id as plain objects whatever the dataset made of it (Ray Data: string[pyarrow])
    return out[["video_id", "score"]].astype({"video_id": object, "score": np.float64}), pseudo


def _flat(column: pd.Series) -> np.ndarray:
    return np.concatenate([np.asarray(v) for v in column]) if len(column) else np.zeros(0)


def _pseudo_frame(video_id, t_start, t_end, label, score) -> pd.DataFrame:
    return pd.DataFrame({"video_id": pd.Series(video_id, dtype=object),
                         "t_start": np.asarray(t_start, np.float64), "t_end": np.asarray(t_end, np.float64),
                         "label": np.asarray(label, np.int64), "score": np.asarray(score, np.float64)})


# ---------------------------------------------------------------- evaluation


def predict_videos(cfg: Config, feats: pd.DataFrame, checkpoint: Path, video_ids: Sequence[str],
                   classes: Sequence[str], device: str | torch.device = "cpu") -> list[dict]:
    """Eval-mode detections of every video after Soft-NMS (alstal.nms_sigma, top_k), in seconds.

    Returns:
        [{"video", "label" (class name), "t_start", "t_end", "score"}], video by video, by score.
    """
    model = load_localizer(Path(checkpoint), device)
    predictions = []
    for row in _video_rows(feats, video_ids).itertuples(index=False):
        with torch.no_grad():
            det = detections(model(_video_tensor(row.path, device)), cfg.alstal)
        seconds = snippets_to_seconds(det["segments"], row.fps, row.snippet_stride)
        predictions += [{"video": row.video_id, "label": classes[int(c)], "t_start": float(a),
                         "t_end": float(b), "score": float(s)}
                        for (a, b), c, s in zip(seconds, det["labels"], det["scores"])]
    return predictions


def tal_document(gt: pd.DataFrame, predictions: list[dict], video_ids: Sequence[str],
                 classes: Sequence[str]) -> dict:
    """The `evaluate_tal` document: ground-truth rows (video_id, t_start, t_end, label index) of
    `video_ids` with class names, and the predictions."""
    rows = gt[gt["video_id"].isin(set(video_ids))]
    truth = [{"video": v, "label": classes[int(c)], "t_start": float(a), "t_end": float(b)}
             for v, a, b, c in zip(rows["video_id"], rows["t_start"], rows["t_end"], rows["label"])]
    return {"ground_truth": truth, "predictions": predictions}


def evaluate_videos(cfg: Config, feats: pd.DataFrame, checkpoint: Path, gt: pd.DataFrame,
                    video_ids: Sequence[str], classes: Sequence[str]) -> dict:
    """mAP at tIoU (preset alstal.preset) of the localizer on `video_ids`; `evaluate_tal`'s result."""
    doc = tal_document(gt, predict_videos(cfg, feats, checkpoint, video_ids, classes), video_ids, classes)
    return evaluate_tal(doc, preset=cfg.alstal.preset)
