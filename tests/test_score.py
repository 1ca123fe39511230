"""MC-dropout scoring with the Ray Data actor pool on the tiny SynthActions set."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from raylab.config import load_config
from raylab.loop import open_run
from raylab.models.detector import Detector
from raylab.score import frame_rows
from raylab.train import MODEL_FILE, save_detector


def test_frame_rows_keep_owned_unlabelled_frames_only():
    batch = {"video_id": np.array(["a", "b"], dtype=object), "frames": np.array([[0, 1], [4, 5]]),
             "owned": np.array([[True, True], [False, True]]),
             "annotated": np.array([[False, True], [False, False]])}
    probs = np.full((3, 2, 2, 4, 4), 0.5)  # maximal uncertainty everywhere
    rows = frame_rows(batch, probs, tau=0.9)
    assert list(zip(rows["video_id"], rows["frame"])) == [("a", 0), ("b", 5)]
    assert np.allclose(rows["uncertainty"], 1.0) and np.allclose(rows["fg_fraction"], 1.0)


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    synth, run = tmp_path_factory.mktemp("synth"), tmp_path_factory.mktemp("run")
    cfg = load_config("pipelines/smoke.yaml", [f"data.synth_dir={synth}", "labels.init_fraction=0.2",
                                               "score.trials=4", "clips.clips_per_task=8"])
    data, store = open_run(cfg, run)
    torch.manual_seed(0)
    (run / "checkpoints" / "cycle=0").mkdir(parents=True)
    save_detector(run / "checkpoints" / "cycle=0" / MODEL_FILE, Detector(cfg.detector, len(data.classes)))
    return cfg, data, store


def read_scores(path) -> pd.DataFrame:
    return pd.read_parquet(path).sort_values(["video_id", "frame"]).reset_index(drop=True)


@pytest.mark.ray
def test_every_frame_is_scored_once_and_neither_pool_size_nor_process_changes_scores(ray_local, scored_run):
    from raylab.score import score_cycle

    cfg, data, store = scored_run
    train, run = data.train, data.paths.path
    one = read_scores(score_cycle(cfg, data, store, 0))
    labelled = {(v, int(f)) for v, frames in store.labelled_frames().items() for f in frames}
    expected = {(v, f) for v, n in zip(train["video_id"], train["num_frames"]) for f in range(n)} - labelled
    assert len(one) == len(expected) and set(zip(one["video_id"], one["frame"])) == expected
    assert one["uncertainty"].between(0, 1).all() and one["uncertainty"].std() > 0
    assert len(list((run / "scores" / "cycle=0").glob("*.parquet"))) > 1  # written in shards

    pool_of_two = replace(cfg, score=replace(cfg.score, actors=2, cpus_per_actor=0.5))
    two = read_scores(score_cycle(pool_of_two, data, store, 0))
    pd.testing.assert_frame_equal(one, two)

    # a sweep trial scores in its own process (ray.in_process): the same batches, so the same scores
    in_process = replace(cfg, ray=replace(cfg.ray, in_process=True))
    pd.testing.assert_frame_equal(one, read_scores(score_cycle(in_process, data, store, 0)))
