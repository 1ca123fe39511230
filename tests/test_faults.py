"""Faults: each test breaks one thing during a step of a run and checks that nothing is lost and that the
result is the one of a run without the fault.

- a scoring actor's process dies mid-pool: Ray restarts it and retries its batches;
- a worker node is removed from a cluster during scoring (a `ray.cluster_utils.Cluster` in a process of
  its own: tests/cluster_jobs.py);
- a training worker's process dies mid-cycle: Ray Train restarts it from the last checkpoint;
- the disk fills up (ENOSPC) during the label-store append of the annotate step.

The scores of a batch are seeded by the batch's clips (`raylab.score.batch_seed`) and the pool receives
the decoded blocks in clip order, so a batch retried on another actor, or on another node, is the same
batch and scores the same.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from raylab.config import load_config
from raylab.data.labels import LabelStore, LabelStoreWriteError
from raylab.loop import open_run
from raylab.models.detector import Detector
from raylab.train import MODEL_FILE, save_detector
from tests.cluster_jobs import CRASH_SCORER, SMOKE, CrashingScorer, run_scenario, train_func_dying_once
from tests.test_labels import _fail_on_call, _listing

# the tiny SynthActions set, short clips; 8 clips per decode task give the scoring pool 9 blocks
OVERRIDES = ["score.trials=2", "train.epochs=2", "clips.clips_per_task=8"]


def open_synth_run(synth: Path, run: Path, *overrides: str):
    """(cfg, RunData, LabelStore) of a new smoke run on the SynthActions set in `synth` (generated once)."""
    cfg = load_config(SMOKE, [f"data.synth_dir={synth}", *overrides])
    return (cfg, *open_run(cfg, run))


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="module")
def scored_run(synth, tmp_path_factory):
    """(cfg, RunData, LabelStore) of a run whose cycle 0 has a detector (randomly initialised, seeded)."""
    cfg, data, store = open_synth_run(synth, tmp_path_factory.mktemp("run"), *OVERRIDES)
    torch.manual_seed(0)
    data.paths.checkpoint_dir(0).mkdir(parents=True)
    save_detector(data.paths.checkpoint_dir(0) / MODEL_FILE, Detector(cfg.detector, len(data.classes)))
    return cfg, data, store


def read_scores(path) -> pd.DataFrame:
    return pd.read_parquet(path).sort_values(["video_id", "frame"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference_scores(ray_local, scored_run) -> pd.DataFrame:
    """The fault-free table: that detector's scores on the shared local Ray, one actor."""
    from raylab.score import score_cycle

    cfg, data, store = scored_run
    scores = read_scores(score_cycle(cfg, data, store, 0))
    total = int(data.train["num_frames"].sum())
    assert len(scores) == total - len(store) and scores["uncertainty"].std() > 0
    return scores


# ---- scoring ----------------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_a_scoring_actor_killed_mid_pool_is_restarted_and_nothing_is_lost(ray_local, scored_run,
                                                                          reference_scores, monkeypatch):
    """One of two actors dies (os._exit) in its second call; Ray restarts it and retries the batch."""
    import raylab.score

    cfg, data, store = scored_run
    folder = data.paths.checkpoint_dir(0)
    (folder / CRASH_SCORER).touch()
    monkeypatch.setattr(raylab.score, "MCScorer", CrashingScorer)  # what score_dataset hands to map_batches
    pool = replace(cfg, score=replace(cfg.score, actors=2, cpus_per_actor=0.5))
    scores = read_scores(raylab.score.score_cycle(pool, data, store, 0))

    assert not (folder / CRASH_SCORER).exists() and len(list(folder.glob("scorer-died-*"))) == 1
    pd.testing.assert_frame_equal(scores, reference_scores)


@pytest.mark.ray
@pytest.mark.slow
def test_a_worker_node_removed_during_scoring_loses_nothing(scored_run, reference_scores, tmp_path):
    """A head and two workers of 1 CPU, two actors of 0.75 CPU. As soon as an actor on a worker node
    starts a batch (each sleeps 0.5 s), the node is removed: its actor and the decoded blocks in its
    object store are gone. Ray restarts the actor on a node with room, recovers the lost blocks and
    retries the batch; the table equals the fault-free one."""
    cfg, data, store = scored_run
    out = tmp_path / "out"
    result = run_scenario("remove_node", data.paths.path, out, [f"data.synth_dir={cfg.data.synth_dir}",
                                                                *OVERRIDES],
                          env={"RAYLAB_TEST_SCORER_DELAY": "0.5"})

    assert result["removed"] in result["workers"] and result["scoring_running_after_removal"]
    marks = [m.name.split("-") for m in out.glob("call-*")]  # call-<node>-<pid>-<n>
    before = set(result["marks_before"])
    after = [m for m in marks if "-".join(m) not in before]
    assert after and all(node != result["removed"] for _, node, _, _ in after)  # scoring went on elsewhere
    scores = read_scores(result["scores"])
    pd.testing.assert_frame_equal(scores.drop(columns="node_id"), reference_scores)


# ---- training ---------------------------------------------------------------------------------------


def history_of(data) -> list[dict]:
    path = data.paths.checkpoint_dir(0) / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]




@pytest.mark.ray
@pytest.mark.slow
def test_a_training_worker_killed_mid_cycle_resumes_from_its_checkpoint(ray_local, synth, tmp_path,
                                                                       monkeypatch):
    """The single training worker dies (os._exit) right after reporting epoch 1 with its checkpoint;
    Ray Train (train.max_failures=1) restarts it from the last checkpoint it registered and the cycle
    completes: every epoch once in the history, and bit for bit the weights of a run without the fault
    (one worker, one torch thread: the run is deterministic). Dropout is on: the checkpoint carries
    the worker's RNG state. The labelled clips span several decode blocks: Ray Train must hand them
    over in clip order (its default ingest options would not)."""
    import raylab.train
    from raylab.asl import train_step

    cfg, data, store = open_synth_run(synth, tmp_path / "run", "train.epochs=3", "train.checkpoint_every=1",
                                      "train.max_failures=1", "clips.clips_per_task=8",
                                      "ray.decode_num_cpus=0.5")
    assert len(store) > 2 * cfg.clips.clips_per_task and cfg.detector.dropout > 0
    marker = tmp_path / "die-once"
    real_fit_cycle = raylab.train.fit_cycle

    def fit_cycle(cfg, run_dir, cycle, train_func, loop_config, datasets):
        """`train_cycle`'s own call, with the detector's worker function wrapped (it may die)."""
        assert train_func is raylab.train.train_func
        return real_fit_cycle(cfg, run_dir, cycle, train_func_dying_once,
                              {**loop_config, "crash_marker": str(marker)}, datasets)

    monkeypatch.setattr(raylab.train, "fit_cycle", fit_cycle)
    checkpoint = data.paths.checkpoint_dir(0) / MODEL_FILE

    train_step(cfg, data, store, 0)  # no marker: the run without the fault
    reference, reference_history = torch.load(checkpoint, weights_only=False), history_of(data)
    assert [h["epoch"] for h in reference_history] == [0, 1, 2]

    marker.touch()
    train_step(cfg, data, store, 0)
    assert not marker.exists() and len(list(tmp_path.glob("die-once.died-*"))) == 1  # it did die
    history = history_of(data)
    # if the controller had not collected epoch 1's report when the worker died, that report is lost with
    # it and the restart resumes from epoch 0's checkpoint: epoch 1 is trained (and logged) once, again
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert [h["total"] for h in history] == [h["total"] for h in reference_history]
    state = torch.load(checkpoint, weights_only=False)
    assert state["epoch"] == 2 and state["model"].keys() == reference["model"].keys()
    for name, value in reference["model"].items():
        torch.testing.assert_close(state["model"][name], value, rtol=0, atol=0, msg=name)
    for a, b in zip(state["optimizer"]["state"].values(), reference["optimizer"]["state"].values()):
        torch.testing.assert_close(a["exp_avg_sq"], b["exp_avg_sq"], rtol=0, atol=0)


# ---- the disk fills up during the annotate step's append --------------------------------------------


def store_rows(store: LabelStore) -> pd.DataFrame:
    """The store's rows without the append timestamps."""
    df = LabelStore(store.path).to_pandas().drop(columns=["created_at"])
    return df.astype({c: str for c in ("boxes", "box_labels", "mask_rle", "segments")})


def manifest_entries(store: LabelStore) -> list[dict]:
    """The manifest's entries without what depends on the clock (the timestamp, and the part's checksum,
    which covers its created_at column)."""
    return [{k: v for k, v in e.items() if k not in ("sha256", "created_at")}
            for e in LabelStore(store.path).appends]


@pytest.fixture(scope="module")
def annotated_reference(synth, tmp_path_factory):
    """select then annotate of cycle 0 with no fault (random selection: no scores, no Ray)."""
    from raylab.asl import annotate_step, select_step

    cfg, data, store = open_synth_run(synth, tmp_path_factory.mktemp("run"), "loop.strategy=random")
    select_step(cfg, data, store, 0)
    annotate_step(cfg, data, store, 0)
    assert store.cycles() == [0, 1]
    return store


@pytest.mark.parametrize("name, call, where", [
    ("fsync", 1, "writing the new part"),
    ("replace", 2, "renaming the new manifest into place: the commit point"),
])
def test_disk_full_during_annotate_leaves_the_store_as_before_and_a_rerun_completes_it(
        synth, tmp_path, monkeypatch, annotated_reference, name, call, where):
    """ENOSPC while the annotate step appends the oracle's answer (`where`): the error says so and names
    the store, the store is byte for byte as before, and rerunning the step once space is free gives the
    store of a run that never had the fault."""
    from raylab.asl import annotate_step, select_step

    cfg, data, store = open_synth_run(synth, tmp_path / "run", "loop.strategy=random")
    select_step(cfg, data, store, 0)
    before, rows_before = _listing(store.path), store_rows(store)

    _fail_on_call(monkeypatch, name, call)  # os.<name> raises ENOSPC on its call-th use from now on
    with pytest.raises(LabelStoreWriteError) as info:
        annotate_step(cfg, data, store, 0)
    monkeypatch.undo()  # space is free again

    message = str(info.value)
    assert "No space left on device" in message and str(store.path) in message
    assert "append 1" in message and "the store is unchanged" in message
    if name == "replace":
        assert ".manifest.json.tmp" in message  # the failing file: the part was in, the commit was not
    assert _listing(store.path) == before  # manifest, parts, no leftover: the same bytes
    pd.testing.assert_frame_equal(store_rows(store), rows_before)
    assert store.cycles() == [0] and LabelStore(store.path).cycles() == [0]

    annotate_step(cfg, data, store, 0)  # the step rerun, as `raylab run` does on resume
    assert sorted(p.name for p in store.path.iterdir() if p.name != ".lock") == \
        sorted(p.name for p in annotated_reference.path.iterdir() if p.name != ".lock")
    assert manifest_entries(store) == manifest_entries(annotated_reference)
    pd.testing.assert_frame_equal(store_rows(store), store_rows(annotated_reference))
