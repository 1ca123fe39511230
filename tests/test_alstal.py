"""AL-STAL in the loop: the bookkeeping of its steps (no Ray) and the smoke pipeline end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from raylab.alstal import cycle_budget, labelled_fraction, training_segments
from raylab.config import ConfigError
from raylab.data.labels import LabelStore
from raylab.loop import open_run
from raylab.rundir import read_state, write_parquet_atomic
from tests.conftest import open_tiny_run

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "pipelines" / "alstal_smoke.yaml"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return open_tiny_run(tmp_path_factory, SMOKE)


def test_initial_videos_are_whole_videos_with_their_segments(tiny_run):
    cfg, run, data, store = tiny_run
    rows = store.to_pandas()
    assert (rows["frame"] == -1).all() and (rows["source"] == "init").all()
    assert len(rows) == max(1, round(cfg.alstal.init_fraction * len(data.train)))
    for video, segments in zip(rows["video_id"], rows["segments"]):
        gt = data.gt[data.gt["video_id"] == video].sort_values("t_start")
        assert [(s["t_start"], s["t_end"], s["label"]) for s in segments] == \
            list(zip(gt["t_start"], gt["t_end"], gt["label"]))
    assert rows["cost"].tolist() == [cfg.alstal.cost_per_video] * len(rows)
    assert labelled_fraction(data, store) == len(rows) / len(data.train)


def test_training_uses_labelled_segments_and_the_previous_cycles_pseudo_labels(tiny_run):
    cfg, run, data, store = tiny_run
    labelled = set(store.labelled_videos())
    others = [v for v in data.train["video_id"] if v not in labelled]
    segments, videos = training_segments(data, store, cycle=0)
    assert set(videos) == labelled and set(segments["source"]) == {"gt"}
    pseudo = pd.DataFrame({"video_id": [others[0], others[0], next(iter(labelled))],
                           "t_start": [0.5, 2.0, 0.1], "t_end": [1.0, 3.0, 0.2], "label": [1, 2, 0],
                           "score": [0.9, 0.6, 0.8]})
    write_parquet_atomic(data.paths.pseudo(0), pseudo)
    segments, videos = training_segments(data, store, cycle=1)
    assert set(videos) == labelled | {others[0]}  # an unlabelled video without pseudo-labels is left out
    used = segments[segments["source"] == "pseudo"]
    assert used["video_id"].tolist() == [others[0]] * 2  # a labelled video's pseudo-labels are ignored
    assert videos == [v for v in data.train["video_id"] if v in set(videos)]  # dataset order


def test_cycle_budget_counts_videos(tiny_run):
    cfg, run, data, store = tiny_run
    n, done = len(data.train), len(store.labelled_videos())
    assert cycle_budget(cfg, data, store) == min(max(1, round(0.25 * n)), n - done)
    assert cycle_budget(replace(cfg, loop=replace(cfg.loop, budget=done / n)), data, store) == 0


def test_alstal_refuses_the_human_oracle(tmp_path, tiny_run):
    cfg = tiny_run[0]
    with pytest.raises(ConfigError, match="simulated oracle"):
        open_run(replace(cfg, loop=replace(cfg.loop, oracle="human")), tmp_path / "run")


def test_alstal_smoke_pipeline_runs_end_to_end(tmp_path):
    """raylab run of the AL-STAL smoke pipeline: features, 2 cycles, scores, pseudo-labels, a report."""
    run, synth = tmp_path / "run", tmp_path / "synth"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    args = [sys.executable, "-m", "raylab.cli", "run", str(SMOKE), "--run-dir", str(run),
            "--set", f"data.synth_dir={synth}", "--set", "ray.num_cpus=2"]
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    state = read_state(run)
    assert state["finished"] and state["stop_reason"] == "2 cycles done"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["cycle"] for x in lines] == [0, 1]
    assert lines[1]["labelled_videos"] > lines[0]["labelled_videos"]
    assert set(lines[0]["metrics"]["map"]) == {"0.3", "0.4", "0.5", "0.6", "0.7", "avg"}
    assert all(0 <= v <= 1 for x in lines for v in x["metrics"]["map"].values())
    selection = pd.read_parquet(run / "selections" / "cycle=0.parquet")
    assert (selection["frame"] == -1).all() and (selection["strategy"] == "tpe").all()
    assert selection["score"].notna().all()
    store = LabelStore(run / "labels")
    assert store.cycles() == [0, 1]
    assert sorted(store.to_pandas().query("cycle == 1")["video_id"]) == sorted(selection["video_id"])
    assert (run / "pseudo" / "cycle=0.parquet").is_file()
    report = subprocess.run([sys.executable, "-m", "raylab.cli", "report", str(run), "--out",
                             str(tmp_path / "r")], cwd=REPO, capture_output=True, text=True)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "Selected videos" in (tmp_path / "r" / "index.html").read_text()
