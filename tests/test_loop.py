"""The active-learning loop: step bookkeeping (no Ray), and `raylab run` end to end in subprocesses.

The end-to-end tests run the smoke pipeline (pipelines/smoke.yaml: tiny SynthActions, 2 cycles) as
`raylab run` processes, each with its own local Ray, and kill them with SIGKILL (the whole process
group) during training, during scoring and right after selection. What the loop decides without Ray
(a run extended by more cycles, the human oracle's wait and import) runs `raylab run` in process
(`ray.in_process`: the same steps, without starting Ray or Ray Train, a fifth of the time).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raylab.asl import cycle_budget, initial_requests
from raylab.config import load_config, to_yaml
from raylab.data.labels import LabelStore
from raylab.loop import config_differences, open_run, share_first_cycle, stop_reason, with_strategy
from raylab.rundir import (
    RunStateError,
    metric_value,
    next_step,
    read_state,
    run_config,
    write_atomic,
    write_state,
)
from tests.conftest import open_tiny_run

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "pipelines" / "smoke.yaml"


# ---- bookkeeping, no Ray ---------------------------------------------------------------------------


def test_next_step_walks_the_cycle_then_the_next():
    assert next_step({"cycle": 0, "step": None}) == (0, "train")
    assert next_step({"cycle": 0, "step": "train"}) == (0, "evaluate")
    assert next_step({"cycle": 2, "step": "select"}) == (2, "annotate")
    assert next_step({"cycle": 2, "step": "annotate"}) == (3, "train")


def test_config_differences_name_each_key_and_ignore_where_ray_runs():
    a = load_config(SMOKE)
    b = load_config(SMOKE, ["loop.strategy=random", "labels.sigma=2.0", "ray.num_cpus=8"])
    assert config_differences(a, a) == []
    assert config_differences(a, b) == ["labels.sigma: 1.3 -> 2.0", "loop.strategy: 'apu-global' -> 'random'"]


def test_a_run_made_before_a_key_existed_resumes_with_its_old_behaviour(tmp_path):
    """A config.yaml saved before `labels.changed_gaps` existed resumes with `nearest`, the rule it was
    made with, not the new default; a run that saved the key keeps its own value."""
    old, new = tmp_path / "old", tmp_path / "new"
    for run in (old, new):
        run.mkdir()
    saved = to_yaml(load_config(SMOKE))
    assert "changed_gaps: skip" in saved
    write_atomic(old / "config.yaml", saved.replace("  changed_gaps: skip\n", ""))
    write_atomic(new / "config.yaml", saved)
    assert run_config(old).labels.changed_gaps == "nearest"
    assert run_config(new).labels.changed_gaps == "skip"
    assert run_config(old, ["loop.cycles=9"]).labels.changed_gaps == "nearest"
    # `labels.pseudo_masks` (2026-12-05): a run that saved `moved` resumes with it, whatever the default;
    # one saved before the key with `copied` (ADDED_KEYS, which holds should the default ever change)
    assert "pseudo_masks: copied" in saved
    write_atomic(old / "config.yaml", saved.replace("  pseudo_masks: copied\n", ""))
    write_atomic(new / "config.yaml", saved.replace("pseudo_masks: copied", "pseudo_masks: moved"))
    assert run_config(old).labels.pseudo_masks == "copied" and run_config(new).labels.pseudo_masks == "moved"


def test_a_run_made_before_the_evaluation_section_is_evaluated_as_it_was(tmp_path):
    """A config.yaml saved without `evaluation` (runs made before 2026-12-04) predicts clips unmirrored,
    calls each frame by its own actionness and gates frame detections by the tubes' threshold, as its
    earlier cycles were evaluated, whatever the defaults are; a run that saved the section keeps its own
    values."""
    saved = to_yaml(load_config(SMOKE, ["evaluation.flip=true", "evaluation.actionness_window=3"]))
    section = ("evaluation:\n  flip: true\n  actionness_window: 3\n  frame_actionness: frame_map\n"
               "  class_pooling: mean\n")
    assert section in saved
    write_atomic(tmp_path / "config.yaml", saved.replace(section, ""))
    old = run_config(tmp_path).evaluation
    assert (old.flip, old.actionness_window, old.frame_actionness) == (False, 1, "tube")
    assert old.class_pooling == "mean"
    write_atomic(tmp_path / "config.yaml", saved.replace("  frame_actionness: frame_map\n", ""))
    assert run_config(tmp_path).evaluation.frame_actionness == "tube"  # made between the two changes
    write_atomic(tmp_path / "config.yaml", saved)
    assert run_config(tmp_path).evaluation.actionness_window == 3


def test_metric_value_reads_family_at_threshold():
    record = {"metrics": {"frame_map": {"0.5": 0.25}, "video_map": {"0.2": 0.5, "0.5:0.95": 0.1}}}
    assert metric_value(record, "frame_map@0.5") == 0.25
    assert metric_value(record, "video_map@0.5:0.95") == 0.1
    assert metric_value(record, "frame_map@0.75") is None


def test_initial_frames_are_a_share_of_each_video_at_least_one():
    index = pd.DataFrame({"video_id": ["a", "b", "c"], "num_frames": [200, 40, 3]})
    picks = initial_requests(index, 0.05, seed=0)
    assert picks.groupby("video_id").size().to_dict() == {"a": 10, "b": 2, "c": 1}
    assert not picks.duplicated().any() and (picks["frame"] >= 0).all()
    assert all(picks.loc[picks["video_id"] == v, "frame"].max() < n for v, n in zip(index["video_id"],
                                                                                   index["num_frames"]))
    other = initial_requests(index, 0.05, seed=1)
    assert not picks.equals(other)  # drawn at random within each video
    assert initial_requests(index, 1.0, seed=0).groupby("video_id").size().tolist() == [200, 40, 3]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return open_tiny_run(tmp_path_factory, SMOKE)


def test_open_run_labels_the_initial_fraction_once_and_refuses_another_config(tiny_run):
    cfg, run, data, store = tiny_run
    per_video = store.to_pandas().groupby("video_id").size()
    expected = {v: max(1, round(cfg.labels.init_fraction * n)) for v, n in zip(data.train["video_id"],
                                                                              data.train["num_frames"])}
    assert store.cycles() == [0] and per_video.to_dict() == expected  # I% of every training video
    state = read_state(run)
    assert state["step"] is None and len(state["run_id"]) == 32
    _, again = open_run(cfg, run)  # a second open appends nothing and keeps the run id
    assert len(again.appends) == 1 and read_state(run)["run_id"] == state["run_id"]
    with pytest.raises(RunStateError, match=r"loop.step_fraction: 0.05 -> 0.1"):
        open_run(replace(cfg, loop=replace(cfg.loop, step_fraction=0.1)), run)


def test_stop_reasons_cycles_budget_and_target(tiny_run):
    cfg, run, data, store = tiny_run
    record = {"cycle": 0, "metrics": {"frame_map": {"0.5": 0.25}, "video_map": {"0.2": 0.5}}}
    write_atomic(data.paths.cycle_metrics(0), json.dumps(record))
    loop = cfg.loop
    assert stop_reason(cfg, data, store, 0) is None  # 2 cycles, budget left, no target
    assert stop_reason(replace(cfg, loop=replace(loop, cycles=1)), data, store, 0) == "1 cycle done"
    spent = replace(cfg, loop=replace(loop, budget=0.05))  # less than the initial 10%
    assert stop_reason(spent, data, store, 0).startswith("labelling budget")
    hit = replace(cfg, loop=replace(loop, target_metric="frame_map@0.5", target_value=0.2))
    assert stop_reason(hit, data, store, 0) == "frame_map@0.5 reached 0.2"
    assert stop_reason(replace(hit, loop=replace(hit.loop, target_value=0.3)), data, store, 0) is None
    with pytest.raises(RunStateError, match="frame_map@0.75.*frame_map@0.5, video_map@0.2"):
        stop_reason(replace(hit, loop=replace(hit.loop, target_metric="frame_map@0.75")), data, store, 0)


def test_cycle_budget_is_the_step_never_past_the_total_budget(tiny_run):
    cfg, run, data, store = tiny_run
    total = int(data.train["num_frames"].sum())
    assert cycle_budget(cfg, data, store) == round(0.05 * total)
    capped = replace(cfg, loop=replace(cfg.loop, budget=(len(store) + 3) / total))
    assert cycle_budget(capped, data, store) == 3
    spent = replace(cfg, loop=replace(cfg.loop, budget=len(store) / total))
    assert cycle_budget(spent, data, store) == 0


# ---- raylab run, end to end --------------------------------------------------------------------------


def raylab(*args: str, log: Path) -> subprocess.Popen:
    """`raylab ARGS` in its own process group (so that a kill takes its Ray processes too)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.Popen([sys.executable, "-m", "raylab.cli", *args], cwd=REPO, env=env,
                            stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)


def smoke_args(run: Path, synth: Path, *extra: str) -> list[str]:
    """`raylab run` of the smoke pipeline; the run directory relative to the repository, as users give it."""
    return ["run", str(SMOKE), "--run-dir", os.path.relpath(run, REPO), "--set", f"data.synth_dir={synth}",
            "--set", "ray.num_cpus=2", *[a for x in extra for a in ("--set", x)]]


def finish(proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    assert proc.wait(timeout=timeout) == 0, log.read_text()[-3000:]


def kill_when(proc: subprocess.Popen, ready, log: Path, timeout: float = 300) -> None:
    """SIGKILL the process group of `proc` as soon as `ready()` is true; fail if it ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"raylab run ended before the kill point:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "kill point not reached in time"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def store_rows(run: Path) -> pd.DataFrame:
    """The label store's content without the append timestamps."""
    df = LabelStore(run / "labels").to_pandas().drop(columns=["created_at"])
    return df.astype({c: str for c in ("boxes", "box_labels", "mask_rle", "segments")})


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One uninterrupted smoke run: CI runs the whole loop end to end."""
    synth, run = tmp_path_factory.mktemp("synth"), tmp_path_factory.mktemp("smoke") / "run"
    log = run.parent / "log.txt"
    finish(raylab(*smoke_args(run, synth), log=log), log)
    return synth, run, log


@pytest.fixture(scope="module")
def in_process_run(smoke_run, tmp_path_factory):
    """The smoke run again, uninterrupted, in process (on the dataset of `smoke_run`)."""
    synth, run = smoke_run[0], tmp_path_factory.mktemp("in-process") / "run"
    log = run.parent / "log.txt"
    finish(raylab(*smoke_args(run, synth, "ray.in_process=true"), log=log), log)
    return synth, run, log


def test_smoke_pipeline_runs_every_step_of_two_cycles(smoke_run):
    synth, run, log = smoke_run
    state = read_state(run)
    assert state["finished"] and state["stop_reason"] == "2 cycles done"
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["cycle"] for line in lines] == [0, 1]
    assert set(lines[0]["seconds"]) == {"train", "evaluate", "score", "select", "annotate"}
    assert lines[1]["labelled_frames"] > lines[0]["labelled_frames"] and lines[1]["cost"] > lines[0]["cost"]
    assert all(0 <= line["metrics"]["frame_map"]["0.5"] <= 1 for line in lines)
    selection = pd.read_parquet(run / "selections" / "cycle=0.parquet")
    store = LabelStore(run / "labels")
    assert store.cycles() == [0, 1] and len(store.to_pandas().query("cycle == 1")) == len(selection)
    assert (selection["strategy"] == "apu-global").all()
    assert selection["rank"].tolist() == list(range(len(selection)))
    status = subprocess.run([sys.executable, "-m", "raylab.cli", "status", str(run)], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    assert "finished: 2 cycles done" in status and "apu-global" in status


def test_killed_runs_resume_and_label_the_same_frames(smoke_run, tmp_path):
    """SIGKILL during training, during scoring and right after selection; each rerun resumes."""
    synth, reference, _ = smoke_run
    run, log = tmp_path / "run", tmp_path / "log.txt"
    cycle0 = run / "checkpoints" / "cycle=0"

    def training():  # at least one epoch reported, the cycle's model not yet saved
        history = cycle0 / "history.jsonl"
        epochs = history.read_text().count("\n") if history.is_file() else 0
        return epochs >= 1 and not (cycle0 / "model.pt").exists()

    kill_when(raylab(*smoke_args(run, synth), log=log), training, log)
    assert read_state(run)["step"] is None

    scores_tmp = run / "scores" / ".cycle=0.partial"  # scoring has begun: its shards go here
    kill_when(raylab(*smoke_args(run, synth), log=log), scores_tmp.exists, log)
    assert read_state(run)["step"] == "evaluate" and not (run / "scores" / "cycle=0").exists()

    selection = run / "selections" / "cycle=0.parquet"
    kill_when(raylab(*smoke_args(run, synth), log=log), selection.exists, log)
    assert read_state(run)["step"] in ("score", "select")
    assert LabelStore(run / "labels").cycles() == [0]
    assert "resuming" in log.read_text()

    finish(raylab(*smoke_args(run, synth), log=log), log)
    assert read_state(run)["finished"]
    pd.testing.assert_frame_equal(store_rows(run), store_rows(reference))
    assert [json.loads(x)["metrics"] for x in (run / "metrics.jsonl").read_text().splitlines()] == \
        [json.loads(x)["metrics"] for x in (reference / "metrics.jsonl").read_text().splitlines()]


def test_rerunning_a_finished_run_changes_nothing(smoke_run):
    synth, run, log = smoke_run
    before = (run / "labels" / "manifest.json").read_text(), (run / "metrics.jsonl").read_text()
    finish(raylab(*smoke_args(run, synth), log=log), log, timeout=120)
    assert ((run / "labels" / "manifest.json").read_text(), (run / "metrics.jsonl").read_text()) == before
    other = subprocess.run([sys.executable, "-m", "raylab.cli", *smoke_args(run, synth, "loop.lam=0.3")],
                           cwd=REPO, capture_output=True, text=True)
    assert other.returncode == 2 and "loop.lam: 0.5 -> 0.3" in other.stderr


def test_a_finished_run_is_extended_by_raising_its_cycles(in_process_run, tmp_path):
    """Stop criteria may change on resume: loop.cycles=3 continues a finished 2-cycle run with cycle 2."""
    import shutil

    synth, reference, log = in_process_run
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    finish(raylab(*smoke_args(run, synth, "loop.cycles=3", "ray.in_process=true"), log=log), log)
    state = read_state(run)
    assert state["finished"] and state["stop_reason"] == "3 cycles done" and state["cycle"] == 2
    assert LabelStore(run / "labels").cycles() == [0, 1, 2]
    assert [json.loads(x)["cycle"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]
    assert "cycles: 3" in (run / "config.yaml").read_text()


def test_a_second_strategy_starts_from_cycle_0_of_the_first(smoke_run, tmp_path):
    """The demo's second strategy: cycle 0 (initial frames, no selection yet) is copied, not retrained."""
    synth, reference, _ = smoke_run
    cfg = with_strategy(run_config(reference), "random")
    run = tmp_path / "random"
    assert share_first_cycle(reference, cfg, run)
    state = read_state(run)
    assert (state["cycle"], state["step"], state["finished"]) == (0, "evaluate", False)
    assert next_step(state) == (0, "score") and "strategy: random" in (run / "config.yaml").read_text()
    model = Path("checkpoints", "cycle=0", "model.pt")
    assert (run / model).read_bytes() == (reference / model).read_bytes()
    shared, = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    first = json.loads((reference / "metrics.jsonl").read_text().splitlines()[0])
    assert shared["metrics"] == first["metrics"] and shared["shared_from"] == str(reference.resolve())
    assert shared["seconds"] == {"train": 0.0, "evaluate": 0.0}  # nothing ran in this run
    pd.testing.assert_frame_equal(store_rows(run), store_rows(reference).query("cycle == 0"))
    assert not share_first_cycle(reference, cfg, run)  # begun: left as it is
    assert read_state(run) == state
    # a one-cycle run is finished by its shared cycle; a config that changes cycle 0 shares nothing
    one = replace(cfg, loop=replace(cfg.loop, cycles=1))
    assert share_first_cycle(reference, one, tmp_path / "one")
    assert read_state(tmp_path / "one")["stop_reason"] == "1 cycle done"
    other = replace(cfg, labels=replace(cfg.labels, sigma=2.0))
    assert not share_first_cycle(reference, other, tmp_path / "other") and not (tmp_path / "other").exists()


def test_state_file_is_updated_atomically(tmp_path):
    write_state(tmp_path, run_id="x", cycle=0, step=None)
    write_state(tmp_path, step="train")
    assert read_state(tmp_path) == {"run_id": "x", "cycle": 0, "step": "train"}
    assert not list(tmp_path.glob(".*.tmp"))


def test_human_oracle_waits_for_the_import_then_continues(in_process_run, tmp_path):
    """loop.oracle=human: the run stops after selection, says so on every rerun, and goes on after
    `raylab import` of the annotators' Label Studio export; the labels equal the simulated oracle's."""
    from raylab.rundir import load_run
    from tests.annotators import annotated

    synth, reference, _ = in_process_run
    run, log = tmp_path / "run", tmp_path / "log.txt"
    args = smoke_args(run, synth, "loop.oracle=human", "ray.in_process=true")
    finish(raylab(*args, log=log), log)
    assert read_state(run)["step"] == "select" and not read_state(run)["finished"]
    finish(raylab(*args, log=log), log, timeout=120)  # still pending: says so again, changes nothing
    assert log.read_text().count("waits for annotators") == 2 and read_state(run)["step"] == "select"

    data = load_run(run)
    answer = annotated(run, "labelstudio", data.gt, data.classes, data.index)
    done = subprocess.run([sys.executable, "-m", "raylab.cli", "import", str(run), str(answer)], cwd=REPO,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    finish(raylab("run", "--run-dir", str(run), log=log), log)  # resumes with the run's own config
    assert read_state(run)["finished"]

    got, want = store_rows(run), store_rows(reference)
    assert list(got["source"]) == ["init"] * (got["cycle"] == 0).sum() + ["human"] * (got["cycle"] == 1).sum()
    keys = ["video_id", "frame", "cycle", "box_labels", "cost"]
    pd.testing.assert_frame_equal(got[keys], want[keys])
    boxes = [LabelStore(r / "labels").to_pandas()["boxes"] for r in (run, reference)]
    for a, b in zip(*boxes):
        assert np.allclose(np.array([list(x) for x in a], float).reshape(-1, 4),
                           np.array([list(x) for x in b], float).reshape(-1, 4), atol=1e-3)


def test_demo_uses_gpus_when_the_cluster_has_some():
    from raylab.demo import use_gpus_if_any

    cfg = load_config(SMOKE)
    assert use_gpus_if_any(cfg, 0) == cfg
    gpu = use_gpus_if_any(replace(cfg, train=replace(cfg.train, num_workers=2)), 1)
    assert gpu.train.use_gpu and gpu.train.num_workers == 1
    assert gpu.score.gpus_per_actor == 1 and gpu.score.actors == 1
