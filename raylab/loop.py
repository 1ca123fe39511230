"""Orchestration of active-learning cycles on Ray (the loop issue completes it: score, select, resume).

Today: the dataset of a run (SynthActions generated on the spot by default), the initial random labels,
and one cycle of train (Ray Train over the Ray Data clip stream) -> evaluate (frame-mAP, video-mAP on
the test split), with one line per cycle in metrics.jsonl.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from raylab.config import Config, to_yaml
from raylab.data.annotations import load_dataset
from raylab.data.clips import annotated_clips
from raylab.data.labels import LabelStore
from raylab.data.stream import clip_dataset, clip_table, init_ray
from raylab.data.targets import group_labels
from raylab.oracle import reveal_frames
from raylab.rundir import dataset_root

log = logging.getLogger(__name__)


def ensure_dataset(cfg: Config) -> Path:
    """The spatio-temporal dataset directory of the config, generating SynthActions when root is ""."""
    root = dataset_root(cfg)
    if not cfg.data.root and not (root / "dataset.json").is_file():
        out = root.parent
        from raylab.data.synthetic import generate

        log.info("generating SynthActions (%s, seed %d) in %s",
                 cfg.data.synth_preset, cfg.data.synth_seed, out)
        generate(out, preset=cfg.data.synth_preset, seed=cfg.data.synth_seed, overwrite=True)
    return root


def initial_requests(index: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """A uniformly random `fraction` of all frames of the videos in `index` (at least one frame)."""
    offsets = np.concatenate([[0], np.cumsum(index["num_frames"].to_numpy())])
    count = max(1, int(round(fraction * offsets[-1])))
    picks = np.sort(np.random.default_rng(seed).choice(offsets[-1], count, replace=False))
    video = np.searchsorted(offsets, picks, side="right") - 1
    return pd.DataFrame({"video_id": index["video_id"].to_numpy()[video], "frame": picks - offsets[video]})


def open_run(cfg: Config, run_dir: Path):
    """Dataset, training index and label store of a run; labels the initial fraction on first use."""
    root = ensure_dataset(cfg)
    meta, index, gt = load_dataset(root)
    train = index[index["split"] == "train"].reset_index(drop=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    store = LabelStore(run_dir / "labels", index=index)
    if len(store) == 0:
        requests = initial_requests(train, cfg.labels.init_fraction, cfg.seed)
        store.append(reveal_frames(gt, requests), cycle=0, source="init")
    return root, meta, index, gt, train, store


def clip_stream(cfg: Config, clips: pd.DataFrame, root: Path, index: pd.DataFrame, store: LabelStore):
    """The Ray Data stream of `clips` with the run's labels, at the config's clip size, σ and weighting."""
    c = cfg.clips
    table = clip_table(clips, index, root, group_labels(store.table()))
    return clip_dataset(table, (c.height, c.width), cfg.labels.sigma, cfg.labels.loss_weighting,
                        c.clips_per_task, cfg.ray.decode_num_cpus)


def training_dataset(cfg: Config, root: Path, index: pd.DataFrame, train: pd.DataFrame, store: LabelStore,
                     cycle: int):
    """The Ray Data clip stream of a cycle: clips around every labelled frame, in a seeded random order."""
    c = cfg.clips
    clips = annotated_clips(train, store.labelled_frames(), c.length, c.stride, c.clips_per_annotation,
                            seed=cfg.seed + cycle)
    clips = clips.sample(frac=1.0, random_state=cfg.seed + cycle).reset_index(drop=True)
    return clip_stream(cfg, clips, root, index, store)


def evaluate_cycle(cfg: Config, checkpoint: Path, root: Path, meta: dict, index: pd.DataFrame,
                   gt: pd.DataFrame) -> dict:
    """frame-mAP / video-mAP of a cycle's detector on the test split (ACT protocol)."""
    from raylab.eval.predict import predict_dataset
    from raylab.eval.stad import evaluate_stad
    from raylab.train import load_detector

    test = index[index["split"] == "test"].reset_index(drop=True)
    doc = predict_dataset(load_detector(checkpoint), test, gt[gt["video_id"].isin(test["video_id"])],
                          meta["classes"], root, cfg.clips.length, (cfg.clips.height, cfg.clips.width),
                          batch=cfg.clips.batch_size)
    return evaluate_stad(doc)


def train_and_evaluate(cfg: Config, run_dir: Path, cycle: int = 0) -> dict:
    """One cycle: train on the labelled frames, evaluate on the test split, append to metrics.jsonl."""
    from raylab.train import train_cycle

    root, meta, index, gt, train, store = open_run(cfg, run_dir)
    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    start = time.perf_counter()
    result = train_cycle(cfg, run_dir, cycle, training_dataset(cfg, root, index, train, store, cycle),
                         len(meta["classes"]))
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    metrics = evaluate_cycle(cfg, result.checkpoint, root, meta, index, gt)
    total = int(train["num_frames"].sum())
    line = {"cycle": cycle, "labelled_fraction": store.labelled_fraction(total),
            "labelled_frames": len(store), "cost": store.cost(),
            "metrics": {"frame_map": metrics["frame_map"], "video_map": metrics["video_map"]},
            "seconds": {"train": round(train_s, 2), "evaluate": round(time.perf_counter() - start, 2)},
            "train_history": result.history}
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps(line) + "\n")
    return line
