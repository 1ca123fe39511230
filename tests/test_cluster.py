"""Multi-node, tested on one machine: a Ray cluster of a head and two worker nodes
(`ray.cluster_utils.Cluster`, each node a raylet of its own) trains a cycle with two DDP workers and scores
it with two actors, one of each per worker node.

The cluster runs in a process of its own (`tests.cluster_jobs`, scenario "cycle"): it cannot share this
process with the session's local Ray. The scores it gives must equal those of the same checkpoint on
that plain single-node Ray: each batch's dropout masks come from its clips (`raylab.score.batch_seed`),
not from where or by which actor it is scored.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from raylab.asl import training_clips
from raylab.config import load_config
from raylab.loop import open_run
from raylab.train import MODEL_FILE, load_detector
from tests.cluster_jobs import SMOKE, run_scenario

pytestmark = [pytest.mark.ray, pytest.mark.slow]

# the tiny SynthActions set, 4-frame clips of 32x64; 8 clips per decode task give the pool 9 blocks
OVERRIDES = ["train.epochs=2", "score.trials=2", "clips.clips_per_task=8"]


@pytest.fixture(scope="module")
def cluster_cycle(tmp_path_factory):
    """(cfg, RunData, LabelStore, scenario result, OUT) of cycle 0 trained and scored on the cluster."""
    synth, out = tmp_path_factory.mktemp("synth"), tmp_path_factory.mktemp("out")
    overrides = [f"data.synth_dir={synth}", *OVERRIDES]
    cfg = load_config(SMOKE, overrides)
    data, store = open_run(cfg, tmp_path_factory.mktemp("run"))  # the initial labels, before the cluster
    result = run_scenario("cycle", data.paths.path, out, overrides)
    return cfg, data, store, result, out


def test_a_cycle_trains_with_one_ddp_worker_per_worker_node(cluster_cycle):
    cfg, data, store, result, out = cluster_cycle
    ranks = {r["rank"]: r for r in (json.loads(p.read_text()) for p in out.glob("rank-*.json"))}
    assert sorted(ranks) == [0, 1]
    assert {r["node_id"] for r in ranks.values()} == set(result["workers"])  # one rank on each worker node

    checkpoint = data.paths.checkpoint_dir(0)
    history = [json.loads(line) for line in (checkpoint / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(cfg.train.epochs))
    assert all(h["total"] > 0 for h in history)
    # each epoch, rank 0 saw its half of the cycle's clips (around the labelled frames, and in every video)
    clips = training_clips(cfg, data.train, store.labelled_frames(), 0)
    assert all(abs(h["clips"] - len(clips) / 2) <= 1 for h in history)
    assert load_detector(checkpoint / MODEL_FILE).num_classes == len(data.classes)


def test_scores_of_two_actors_on_two_nodes_equal_a_single_node_scoring(ray_local, cluster_cycle):
    from raylab.score import score_cycle

    cfg, data, store, result, out = cluster_cycle
    on_cluster = pd.read_parquet(out / "scores").sort_values(["video_id", "frame"]).reset_index(drop=True)
    assert set(on_cluster["node_id"]) == set(result["workers"])  # rows came from both worker nodes

    local = pd.read_parquet(score_cycle(cfg, data, store, 0))  # one actor on the session's local Ray
    local = local.sort_values(["video_id", "frame"]).reset_index(drop=True)
    assert len(local) == int(data.train["num_frames"].sum()) - len(store)
    assert local["uncertainty"].std() > 0
    pd.testing.assert_frame_equal(on_cluster.drop(columns="node_id"), local)
