"""The detector learns from labels: with every frame of tiny SynthActions labelled it scores clearly higher
than with 1% (plain torch in this process; the Ray Train path is tested in test_train.py)."""

import numpy as np
import pytest
import torch

from raylab.asl import initial_requests
from raylab.config import load_config
from raylab.data.annotations import load_dataset
from raylab.data.clips import annotated_clips
from raylab.data.stream import clip_table, decode_clips
from raylab.data.targets import group_labels
from raylab.eval.predict import predict_dataset
from raylab.eval.stad import evaluate_stad
from raylab.models.detector import Detector
from raylab.oracle import reveal_frames
from raylab.rundir import ensure_dataset
from raylab.train import train_epoch


def fit_and_evaluate(cfg, root, index, gt, classes, fraction: float, epochs: int) -> dict:
    train = index[index["split"] == "train"].reset_index(drop=True)
    test = index[index["split"] == "test"].reset_index(drop=True)
    grouped = group_labels(reveal_frames(gt, initial_requests(train, fraction, seed=0)))
    labelled = {v: np.array(sorted(frames)) for v, frames in grouped.items()}
    clips = annotated_clips(train, labelled, cfg.clips.length, 1, seed=0).sample(frac=1.0, random_state=0)
    table = clip_table(clips, index, root, grouped)
    size = (cfg.clips.height, cfg.clips.width)
    batches = [decode_clips(table.slice(i, 8), size, cfg.labels.sigma) for i in range(0, table.num_rows, 8)]
    torch.manual_seed(0)
    model = Detector(cfg.detector, len(classes))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    for _ in range(epochs):
        train_epoch(model, batches, optimizer, "cpu", False, 1.0, 1.0)
    doc = predict_dataset(model, test, gt[gt["video_id"].isin(test["video_id"])], classes, root,
                          cfg.clips.length, size)
    return evaluate_stad(doc)


@pytest.mark.slow
def test_all_labels_score_clearly_higher_than_one_percent(tmp_path):
    torch.set_num_threads(2)
    cfg = load_config("pipelines/smoke.yaml", [f"data.synth_dir={tmp_path}"])
    root = ensure_dataset(cfg)
    meta, index, gt = load_dataset(root)
    few = fit_and_evaluate(cfg, root, index, gt, meta["classes"], 0.01, epochs=10)
    full = fit_and_evaluate(cfg, root, index, gt, meta["classes"], 1.0, epochs=10)
    assert full["frame_map"]["0.5"] > few["frame_map"]["0.5"] + 0.1, (few, full)
    assert full["video_map"]["0.2"] > few["video_map"]["0.2"] + 0.1, (few, full)


@pytest.mark.slow
@pytest.mark.parametrize("weighting", ["mgw", "masking", "interpolation"])
def test_each_loss_weighting_trains(tmp_path_factory, weighting):
    """The localization loss falls under MGW weights and under both of its limits."""
    torch.set_num_threads(2)
    synth = tmp_path_factory.getbasetemp() / "weighting-synth"  # generated once, shared by the three
    cfg = load_config("pipelines/smoke.yaml",
                      [f"data.synth_dir={synth}", f"labels.loss_weighting={weighting}"])
    root = ensure_dataset(cfg)
    meta, index, gt = load_dataset(root)
    train = index[index["split"] == "train"].reset_index(drop=True)
    grouped = group_labels(reveal_frames(gt, initial_requests(train, 0.2, seed=0)))
    labelled = {v: np.array(sorted(frames)) for v, frames in grouped.items()}
    table = clip_table(annotated_clips(train, labelled, cfg.clips.length, 1, seed=0), index, root, grouped)
    size = (cfg.clips.height, cfg.clips.width)
    batches = [decode_clips(table.slice(i, 8), size, cfg.labels.sigma, weighting)
               for i in range(0, table.num_rows, 8)]
    weights = np.concatenate([b["weight"].ravel() for b in batches])
    if weighting == "masking":
        assert set(np.unique(weights)) == {0.0, 1.0}
    elif weighting == "interpolation":
        assert weights.min() == 1.0
    else:
        assert 0 < weights.min() < 1  # frames next to a labelled one get a partial weight
    torch.manual_seed(0)
    model = Detector(cfg.detector, len(meta["classes"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    losses = [train_epoch(model, batches, optimizer, "cpu", False, 1.0, 1.0)["localization"]
              for _ in range(8)]
    assert losses[-1] < 0.7 * losses[0], losses  # masking supervises fewer frames and falls slowest
