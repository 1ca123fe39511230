"""ASL's steps of the active-learning cycle: frames, the spatio-temporal detector, APU selection.

    train     Ray Train on clips around every labelled frame (MGW loss)   checkpoints/cycle=K/model.pt
    evaluate  frame-/video-mAP on the test split (ACT protocol)           metrics/cycle=K.json
    score     MC-dropout actor pool over the unlabelled frames            scores/cycle=K/   (skipped by
              random and equidistant selection, which never read scores)
    select    `loop.strategy` picks loop.step_fraction of all frames      selections/cycle=K.parquet
    annotate  the oracle answers; one atomic label-store append           labels/ (cycle K+1)

`raylab.loop` runs these in order and resumes them; this module only knows what each step does.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd

from raylab.clicks import TOLERANCE, clicks_budget, full_clicks, spend_clicks
from raylab.config import Config
from raylab.data.annotations import load_dataset
from raylab.data.clips import annotated_clips, video_clips
from raylab.data.labels import LabelStore
from raylab.data.stream import clip_dataset, clip_table, init_ray, quiet_per_epoch
from raylab.data.targets import group_labels
from raylab.oracle import reveal_frames
from raylab.rundir import (
    STEPS,
    PendingAnnotation,
    RunData,
    RunPaths,
    ensure_dataset,
    write_atomic,
    write_parquet_atomic,
)

log = logging.getLogger(__name__)

# metrics of the per-cycle tables: (name for rundir.metric_value, header)
TABLE_METRICS = (("frame_map@0.5", "f-mAP@0.5"), ("video_map@0.2", "v-mAP@0.2"),
                 ("video_map@0.5", "v-mAP@0.5"))


def initial_requests(index: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """The initial frames (ASL Sec. 4): `fraction` of the frames of each video of `index`, rounded, at
    least one, drawn uniformly at random within the video, so that every video starts with a label."""
    rng = np.random.default_rng(seed)
    rows = []
    for video_id, n in zip(index["video_id"], index["num_frames"]):
        count = min(int(n), max(1, int(round(fraction * int(n)))))
        rows += [(video_id, int(f)) for f in np.sort(rng.choice(int(n), count, replace=False))]
    return pd.DataFrame(rows, columns=["video_id", "frame"]).astype({"frame": np.int64})


def prepare(cfg: Config) -> Path:
    """What every run of `cfg` shares, made once before a sweep's trials start: the dataset."""
    return ensure_dataset(cfg)


def open_data(cfg: Config, paths: RunPaths) -> tuple[RunData, LabelStore]:
    """The spatio-temporal dataset and the label store; labels the initial random frames on first use."""
    root = ensure_dataset(cfg)
    meta, index, gt = load_dataset(root)
    data = RunData(cfg, paths, root, meta, index, gt)
    store = LabelStore(paths.labels, index=index)
    if 0 not in store.cycles():
        requests = initial_requests(data.train, cfg.labels.init_fraction, cfg.seed)
        store.append(reveal_frames(gt, requests, cfg.loop.clicks_per_actor), cycle=0, source="init")
    return data, store


def labelled_fraction(data: RunData, store: LabelStore) -> float:
    """Labelled training frames / all training frames."""
    return store.labelled_fraction(int(data.train["num_frames"].sum()))


# ---- the clip streams of a cycle -------------------------------------------------------------------


def clip_stream(cfg: Config, clips: pd.DataFrame, root: Path, index: pd.DataFrame, store: LabelStore):
    """The Ray Data stream of `clips` with the run's labels, at the config's clip size, σ, weighting,
    treatment of changed gaps and pseudo-label masks."""
    c = cfg.clips
    table = clip_table(clips, index, root, group_labels(store.table()))
    return clip_dataset(table, (c.height, c.width), cfg.labels.sigma, cfg.labels.loss_weighting,
                        cfg.labels.changed_gaps, cfg.labels.pseudo_masks, c.clips_per_task,
                        cfg.ray.decode_num_cpus, cfg.ray.in_process)


def training_clips(cfg: Config, train: pd.DataFrame, labelled: dict, cycle: int) -> pd.DataFrame:
    """A cycle's training clips, in a seeded random order: clips around the labelled frames (every one
    in a clip) and `clips.video_clips` clips anywhere in every training video, which carry its class
    label to the classifier whether or not they hold a labelled frame (their localisation loss is
    weighted by MGW as any clip's: 0 far from every label)."""
    c = cfg.clips
    clips = pd.concat([
        annotated_clips(train, labelled, c.length, c.stride, c.clips_per_annotation, seed=cfg.seed + cycle,
                        cover=c.cover),
        video_clips(train, c.video_clips, c.length, c.stride, seed=cfg.seed + cycle + 1)])
    return clips.sample(frac=1.0, random_state=cfg.seed + cycle).reset_index(drop=True)


def training_dataset(cfg: Config, data: RunData, store: LabelStore, cycle: int,
                     clips: pd.DataFrame | None = None):
    """The Ray Data clip stream of a cycle (`clips`, by default `training_clips`)."""
    if clips is None:
        clips = training_clips(cfg, data.train, store.labelled_frames(), cycle)
    return quiet_per_epoch(clip_stream(cfg, clips, data.root, data.index, store))


# ---- the steps -------------------------------------------------------------------------------------


def train_step(cfg: Config, data: RunData, store: LabelStore, cycle: int) -> None:
    from raylab.train import train_cycle

    init_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.in_process)
    clips = training_clips(cfg, data.train, store.labelled_frames(), cycle)
    epochs = cfg.train.cycle_epochs(len(clips))  # few labels train as long as many (train.min_clips)
    cfg = replace(cfg, train=replace(cfg.train, epochs=epochs))
    dataset = training_dataset(cfg, data, store, cycle, clips)
    train_cycle(cfg, data.paths.path, cycle, dataset, len(data.classes))


def evaluate_step(cfg: Config, data: RunData, store: LabelStore, cycle: int) -> None:
    """frame-/video-mAP of the cycle's detector on the test split (ACT protocol) -> metrics/cycle=K.json
    (`evaluate_cycle`)."""
    write_atomic(data.paths.cycle_metrics(cycle), json.dumps(evaluate_cycle(cfg, data, store, cycle)) + "\n")


def evaluate_cycle(cfg: Config, data: RunData, store: LabelStore, cycle: int) -> dict:
    """The metrics record of the cycle's detector on the test split (ACT protocol), predicted as
    `evaluation` says (`predict_test`), with the thresholds it was predicted with."""
    return cycle_record(cfg, data, store, cycle, *predict_test(cfg, data, store, cycle))


def predict_test(cfg: Config, data: RunData, store: LabelStore, cycle: int):
    """(evaluation document, calibration, test index) of the cycle's detector on the test split. The
    actionness thresholds below which a frame gets no frame detection and is left out of the tubes, and
    the foreground threshold of its box, are set first, on the labelled frames of `store` (never on the
    test split)."""
    from raylab.eval.predict import calibrate_detector, predict_dataset
    from raylab.train import MODEL_FILE, load_detector

    test = data.index[data.index["split"] == "test"].reset_index(drop=True)
    checkpoint = data.paths.checkpoint_dir(cycle)
    model = load_detector(checkpoint / MODEL_FILE)
    c = cfg.clips
    size = (c.height, c.width)
    calibration = calibrate_detector(model, data.train, store.to_pandas(), data.root, c.length, size,
                                     batch=c.batch_size, stride=c.stride,
                                     actionness_window=cfg.evaluation.actionness_window,
                                     flip=cfg.evaluation.flip,
                                     frame_actionness=cfg.evaluation.frame_actionness,
                                     class_pooling=cfg.evaluation.class_pooling)
    doc = predict_dataset(model, test, data.gt[data.gt["video_id"].isin(test["video_id"])], data.classes,
                          data.root, c.length, size, batch=c.batch_size, calibration=calibration,
                          stride=c.stride)
    return doc, calibration, test


def cycle_record(cfg: Config, data: RunData, store: LabelStore, cycle: int, doc: dict, calibration,
                 test: pd.DataFrame) -> dict:
    """The metrics record of `predict_test`'s document: frame- and video-mAP, video accuracy, the
    thresholds, the labels it was trained on and the cycle's training history."""
    from raylab.eval.predict import video_accuracy
    from raylab.eval.stad import evaluate_stad

    metrics = evaluate_stad(doc)
    history = data.paths.checkpoint_dir(cycle) / "history.jsonl"
    return {"cycle": cycle, "labelled_fraction": labelled_fraction(data, store),
            "labelled_frames": len(store), "cost": store.cost(),
            "clicks_fraction": store.cost() / max(total_clicks(cfg, data), TOLERANCE),
            "metrics": {"frame_map": metrics["frame_map"], "video_map": metrics["video_map"]},
            "video_accuracy": video_accuracy(doc, test), "actionness_threshold": calibration.min_actionness,
            "frame_actionness_threshold": calibration.frame_min_actionness,
            "mask_threshold": calibration.mask_threshold, "evaluation": asdict(cfg.evaluation),
            "train_history": [json.loads(line) for line in history.read_text().splitlines()]
            if history.is_file() else []}


def score_step(cfg: Config, data: RunData, store: LabelStore, cycle: int) -> None:
    from raylab.acquisition.select import UNSCORED
    from raylab.score import score_cycle

    if cfg.loop.strategy in UNSCORED:
        log.info("cycle %d: %s selection reads no scores; scoring skipped", cycle, cfg.loop.strategy)
        return
    score_cycle(cfg, data, store, cycle)


def total_clicks(cfg: Config, data: RunData) -> float:
    """The clicks of labelling every training frame (raylab/clicks.py)."""
    return full_clicks(data.gt, data.train["video_id"], cfg.loop.clicks_per_actor)


def cycle_budget(cfg: Config, data: RunData, store: LabelStore) -> float:
    """Frames to select this cycle: step_fraction of the training frames, never past loop.budget; with
    loop.budget_unit clicks, the same fractions of the clicks of labelling every training frame."""
    total = int(data.train["num_frames"].sum())
    if cfg.loop.budget_unit == "clicks":
        left = clicks_budget(cfg.loop.step_fraction, cfg.loop.budget, total_clicks(cfg, data), store.cost())
        return left if len(store) < total else 0.0
    step = max(1, int(round(cfg.loop.step_fraction * total)))
    return max(0, min(step, int(np.floor(cfg.loop.budget * total + 1e-9)) - len(store), total - len(store)))


def select_step(cfg: Config, data: RunData, store: LabelStore, cycle: int) -> None:
    from raylab.acquisition.select import UNSCORED, select_frames

    train = data.train
    if cfg.loop.strategy in UNSCORED:  # every frame is a candidate; the score column is not read
        frames = np.concatenate([np.arange(n) for n in train["num_frames"]])
        scores = pd.DataFrame({"video_id": np.repeat(train["video_id"].to_numpy(), train["num_frames"]),
                               "frame": frames, "uncertainty": 0.0})
    else:
        from raylab.score import read_score_columns

        entropy = ("entropy",) if cfg.loop.strategy == "entropy" else ()
        scores = read_score_columns(data.paths.scores(cycle), ("video_id", "frame", "uncertainty", *entropy))
    labelled = store.to_pandas()[["video_id", "frame"]]
    num_frames = dict(zip(train["video_id"], train["num_frames"]))

    def pick(budget: int) -> pd.DataFrame:
        return select_frames(scores, labelled, num_frames, budget, cfg.loop.strategy, sigma=cfg.labels.sigma,
                             lam=cfg.loop.lam, seed=cfg.seed + cycle, min_gap=cfg.loop.min_gap)

    budget = cycle_budget(cfg, data, store)
    picked = pick(budget) if cfg.loop.budget_unit == "frames" else _pick_clicks(cfg, data, pick, budget)
    write_parquet_atomic(data.paths.selection(cycle), picked)


def _pick_clicks(cfg: Config, data: RunData, pick, clicks: float) -> pd.DataFrame:
    """The ranked selection cut where its clicks pass `clicks` (raylab/clicks.py); a longer list is asked
    for until its clicks pass the budget or the candidates run out."""
    n = max(1, math.ceil(clicks / cfg.loop.clicks_per_actor)) if cfg.loop.clicks_per_actor > 0 else 1
    while True:
        picked = pick(n)
        costs = reveal_frames(data.gt, picked[["video_id", "frame"]], cfg.loop.clicks_per_actor)["cost"]
        if costs.sum() > clicks + TOLERANCE or len(picked) < n:
            return picked.head(spend_clicks(costs.to_numpy(), clicks))
        n *= 2


def annotate_step(cfg: Config, data: RunData, store: LabelStore, cycle: int) -> None:
    """The oracle's answer to cycle K's selection, appended as cycle K+1 (once: a rerun finds it there)."""
    if cycle + 1 in store.cycles():
        return
    selection = pd.read_parquet(data.paths.selection(cycle))
    if cfg.loop.oracle == "human":
        raise PendingAnnotation(cycle)
    rows = reveal_frames(data.gt, selection, cfg.loop.clicks_per_actor)
    store.append(rows, cycle=cycle + 1, source="oracle")


STEP_FUNCTIONS = {"train": train_step, "evaluate": evaluate_step, "score": score_step,
                  "select": select_step, "annotate": annotate_step}
assert tuple(STEP_FUNCTIONS) == STEPS


