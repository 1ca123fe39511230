"""Sweeps: the sweep YAML and the objective (no Ray), a sweep on the shared Ray whose scheduler stops a
trial (its resources must come back), and `raylab sweep` in subprocesses: the CI smoke sweep, and
the same sweep with its driver killed and rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raylab.config import ConfigError
from raylab.sweep import ObjectiveConfig, TrialResources, load_sweep, objective_value, trial_config

REPO = Path(__file__).resolve().parents[1]
SMOKE_SWEEP = REPO / "pipelines" / "sweep_smoke.yaml"


def records(points):
    return [{"cycle": i, "labelled_fraction": x, "metrics": {"frame_map": {"0.5": y}}}
            for i, (x, y) in enumerate(points)]


# ---- no Ray ---------------------------------------------------------------------------------------


def test_auc_is_the_mean_height_of_the_curve_over_its_labelled_range():
    curve = records([(0.1, 0.2), (0.2, 0.4), (0.4, 0.4)])
    auc = ObjectiveConfig(metric="frame_map@0.5", kind="auc")
    # trapezoids: 0.1 * 0.3 + 0.2 * 0.4 = 0.11 over a width of 0.3
    assert objective_value(curve, auc, "frame_map@0.5") == pytest.approx(0.11 / 0.3)
    assert objective_value(curve[:1], auc, "frame_map@0.5") == pytest.approx(0.2)
    # up to a budget: cut at 0.3 (interpolated 0.4), or held at the last value past the curve's end
    cut = ObjectiveConfig(metric="frame_map@0.5", kind="auc", budget=0.3)
    assert objective_value(curve, cut, "frame_map@0.5") == pytest.approx((0.03 + 0.04) / 0.2)
    held = ObjectiveConfig(metric="frame_map@0.5", kind="auc", budget=0.5)
    assert objective_value(curve[:2], held, "frame_map@0.5") == pytest.approx((0.03 + 0.12) / 0.4)


def test_metric_at_budget_interpolates_between_cycles():
    curve = records([(0.1, 0.2), (0.3, 0.6)])
    at = ObjectiveConfig(metric="frame_map@0.5", kind="at_budget", budget=0.2)
    assert objective_value(curve, at, "frame_map@0.5") == pytest.approx(0.4)
    assert objective_value(curve[:1], at, "frame_map@0.5") == pytest.approx(0.2)  # not there yet: last value
    with pytest.raises(ValueError, match="missing"):
        objective_value(curve, at, "frame_map@0.75")


def write_sweep(tmp_path, text: str) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(f"pipeline: {REPO / 'pipelines' / 'smoke.yaml'}\n{text}")
    return path


@pytest.mark.parametrize("text, message", [
    ("space: {labels.sigma: {grid: [1.0]}}\nsearch: {algorithm: bayes}", "search.algorithm must be"),
    ("space: {labels.sigmaa: {grid: [1.0]}}", "space.labels.sigmaa value 1.0: .*unknown key"),
    ("space: {score.tau: {uniform: [0.5, 1.5]}}", r"score.tau value 1.5: .*score.tau must be in \(0, 1\]"),
    ("space: {loop.lam: {uniform: [0.1]}}", "needs \\[low, high\\]"),
    ("space: {loop.lam: {between: [0, 1]}}", "must be one of"),
    ("space: {loop.lam: {uniform: [0, 1]}}\nsearch: {algorithm: grid}", "grid needs every knob"),
    ("space: {loop.lam: {grid: [0, 1]}}\nsearch: {algorithm: optuna}", "optuna samples its knobs"),
    ("space: {loop.lam: {grid: [0.5]}}\nobjective: {metric: map@avg}", "not a metric of method asl"),
    ("space: {loop.lam: {grid: [0.5]}}\nobjective: {kind: at_budget}", "objective.budget"),
    ("space: {}", "names no knob"),
    ("set: {loop.oracle: human}\nspace: {loop.lam: {grid: [0.5]}}", "oracle simulated"),
    ("space: {loop.lam: {grid: [0.5]}}\nschedule: {name: asha}", "unknown key.*schedule"),
])
def test_bad_sweep_files_are_refused_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(write_sweep(tmp_path, text))


def test_trial_config_applies_knobs_runs_in_process_and_makes_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sweep = load_sweep(write_sweep(tmp_path, "set: {data.synth_dir: rel/synth, loop.cycles: 3}\n"
                                             "space: {labels.sigma: {uniform: [0.5, 4]}}"))
    assert sweep.base.data.synth_dir == str(tmp_path / "rel" / "synth") and sweep.base.loop.cycles == 3
    cfg = trial_config(sweep.base, {"labels.sigma": 2.5, "loop.lam": 0.2}, TrialResources(gpus_per_trial=1),
                       name="t1")
    assert (cfg.labels.sigma, cfg.loop.lam, cfg.name) == (2.5, 0.2, "t1")
    assert cfg.ray.in_process and cfg.train.use_gpu and cfg.score.gpus_per_actor == 1
    assert cfg.detector == sweep.base.detector


def test_alstal_knobs_and_overrides_of_the_sweep_file():
    sweep = load_sweep(REPO / "pipelines" / "sweep_alstal.yaml",
                       ["search.num_samples=2", "set.loop.cycles=2"])
    assert sweep.search.num_samples == 2 and sweep.base.loop.cycles == 2 and sweep.base.method == "alstal"
    cfg = trial_config(sweep.base, {"alstal.radius": 3, "alstal.regions": 8, "alstal.pseudo_threshold": 0.7})
    assert (cfg.alstal.radius, cfg.alstal.regions, cfg.alstal.pseudo_threshold) == (3, 8, 0.7)
    assert sweep.metric == "map@avg"


def test_optuna_search_samples_inside_the_space():
    """The optuna algorithm is Tune's OptunaSearch over the knobs (optuna is a dev dependency)."""
    from raylab.tune import OBJECTIVE, _search_algorithm, param_space

    sweep = load_sweep(REPO / "pipelines" / "sweep_asl.yaml", ["search.algorithm=optuna"])
    searcher = _search_algorithm(sweep)
    assert searcher.set_search_properties(OBJECTIVE, "max", param_space(sweep))
    for i in range(3):
        params = searcher.suggest(f"t{i}")
        assert 0.5 <= params["labels.sigma"] <= 4.0 and 0 <= params["loop.lam"] <= 1
        assert params["score.tau"] in (0.8, 0.9, 0.95) and params["loop.step_fraction"] in (0.02, 0.03)


def test_asha_stops_after_any_cycle_up_to_the_pipeline_cycles():
    from ray.tune.schedulers import ASHAScheduler

    from raylab.tune import _scheduler

    sweep = load_sweep(REPO / "pipelines" / "sweep_asl.yaml")
    asha = _scheduler(sweep)
    assert isinstance(asha, ASHAScheduler)
    assert asha._max_t == 3 and asha._time_attr == "training_iteration" and asha._reduction_factor == 2
    # rungs (where trials are compared) after cycles 1 and 2: a trial may be stopped after any cycle
    assert sorted(milestone for milestone, _ in asha._brackets[0]._rungs) == [1, 2]
    assert _scheduler(load_sweep(SMOKE_SWEEP)) is None


# ---- a sweep on the shared Ray: a stopped trial gives its resources back ------------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_a_stopped_trial_frees_its_resources_for_the_next(ray_local, tmp_path):
    """Each trial asks for both CPUs of the shared 2-CPU Ray, so the second trial can start only once
    the first, stopped by the scheduler after its first cycle, has given back everything it held
    (a nested Ray Train run would leave its workers' placement group behind: ray#54305)."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    from raylab.tune import run_sweep

    class StopFirstTrialAfterOneCycle(FIFOScheduler):
        def on_trial_result(self, tune_controller, trial, result):
            if trial.trial_id.endswith("00000"):
                return TrialScheduler.STOP
            return TrialScheduler.CONTINUE

    synth = tmp_path / "synth"
    sweep = load_sweep(SMOKE_SWEEP, [f"set.data.synth_dir={synth}", "resources.cpus_per_trial=2",
                                     "search.max_concurrent=1"])
    table = run_sweep(sweep, tmp_path / "sweep", verbose=0, scheduler=StopFirstTrialAfterOneCycle())
    by_sigma = table.set_index("labels.sigma")
    assert by_sigma.loc[0.8, "cycles"] == 1 and not by_sigma.loc[0.8, "finished"]
    assert by_sigma.loc[2.0, "cycles"] == 2 and by_sigma.loc[2.0, "finished"]
    import ray

    deadline = time.time() + 30
    while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == 2
    assert all(pg["state"] == "REMOVED" for pg in ray.util.placement_group_table().values())
    assert (tmp_path / "sweep" / "report" / "index.html").is_file()


# ---- raylab sweep in subprocesses --------------------------------------------------------------------


def trials_command(kind: str, file: Path, out: Path, synth: Path) -> list[str]:
    """`raylab sweep|study FILE` into `out`, on the dataset generated in `synth`, on a local Ray of 2 CPUs."""
    return [sys.executable, "-m", "raylab.cli", kind, str(file), "--dir", str(out), "--quiet",
            "--set", f"set.data.synth_dir={synth}", "--set", "set.ray.num_cpus=2"]


def sweep_command(out: Path, synth: Path) -> list[str]:
    return trials_command("sweep", SMOKE_SWEEP, out, synth)


def kill_after_a_cycle(command: list[str], out: Path, kind: str) -> None:
    """Start `command` in a session of its own and SIGKILL its whole process group (driver, its Ray, the
    trials) once a trial has evaluated a cycle in `out` and Tune has saved its experiment state."""
    proc = subprocess.Popen(command, cwd=REPO, env=clean_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (list(out.glob("runs/*/metrics/cycle=0.json"))
                   and list(out.glob("tune/experiment_state*"))):
            assert proc.poll() is None, f"the {kind} ended before it could be killed"
            assert time.time() < deadline, "no trial evaluated a cycle in time"
            time.sleep(0.5)
        time.sleep(1.0)  # let Tune save its experiment state with the report
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    """`raylab sweep pipelines/sweep_smoke.yaml` run to its end without a fault."""
    tmp = tmp_path_factory.mktemp("sweep")
    done = subprocess.run(sweep_command(tmp / "sweep", tmp / "synth"), cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return tmp, done.stdout


def trial_curves(sweep_dir: Path) -> dict[float, list]:
    """labels.sigma -> each cycle's (labelled fraction, metrics) of that trial."""
    table = pd.read_csv(sweep_dir / "results.csv")
    out = {}
    for _, row in table.iterrows():
        lines = (Path(row["run_dir"]) / "metrics.jsonl").read_text().splitlines()
        out[row["labels.sigma"]] = [(r["labelled_fraction"], r["metrics"]) for r in map(json.loads, lines)]
    return out


@pytest.mark.slow
def test_smoke_sweep_reports_every_trial_and_the_best(smoke_sweep):
    tmp, stdout = smoke_sweep
    table = pd.read_csv(tmp / "sweep" / "results.csv")
    assert sorted(table["labels.sigma"]) == [0.8, 2.0]
    assert (table["cycles"] == 2).all() and table["finished"].all()
    assert np.isfinite(table["objective"]).all()
    best = table.loc[table["objective"].idxmax()]
    assert f"best: trial {best['trial']} (labels.sigma={best['labels.sigma']:.4g})" in stdout
    page = (tmp / "sweep" / "report" / "index.html").read_text()
    assert "Best configurations" in page and page.count("<img") == 2 and str(best["trial"]) in page
    for run_dir in table["run_dir"]:
        trial = json.loads((Path(run_dir) / "trial.json").read_text())
        assert set(trial["params"]) == {"labels.sigma"}


@pytest.mark.slow
def test_a_sweep_whose_driver_is_killed_resumes_to_the_same_result(smoke_sweep, tmp_path):
    """SIGKILL the whole `raylab sweep` process group (driver, its Ray, the trials) once a trial has
    reported a cycle; the same command then resumes the sweep (Tune's restore) and every trial ends
    with the same curve as in the sweep that never failed."""
    out, synth = tmp_path / "sweep", smoke_sweep[0] / "synth"  # the generated dataset is reused
    kill_after_a_cycle(sweep_command(out, synth), out, "sweep")
    assert not (out / "results.csv").exists()  # killed before it finished
    done = subprocess.run(sweep_command(out, synth), cwd=REPO, env=clean_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "resuming sweep_smoke from" in done.stderr
    assert trial_curves(out) == trial_curves(smoke_sweep[0] / "sweep")


def test_a_sweep_dir_refuses_other_settings(tmp_path):
    from raylab.rundir import RunStateError
    from raylab.tune import _check_or_save_settings

    _check_or_save_settings(load_sweep(SMOKE_SWEEP), tmp_path)
    _check_or_save_settings(load_sweep(SMOKE_SWEEP, ["set.ray.num_cpus=8"]), tmp_path)  # where Ray runs: fine
    with pytest.raises(RunStateError, match="differences in: base, set"):
        _check_or_save_settings(load_sweep(SMOKE_SWEEP, ["set.loop.cycles=3"]), tmp_path)


def test_runs_of_a_start_tune_cannot_restore_are_kept_aside(tmp_path):
    from raylab.tune import _set_aside_unknown_runs

    runs = tmp_path / "runs"
    (runs / "abc_00000").mkdir(parents=True)
    (runs / "abc_00000" / "trial.json").write_text("{}")
    _set_aside_unknown_runs(runs)
    assert list(runs.iterdir()) == []
    assert (tmp_path / "runs-abandoned-1" / "abc_00000" / "trial.json").is_file()
    _set_aside_unknown_runs(runs)  # nothing there: nothing moved
    assert not (tmp_path / "runs-abandoned-2").exists()
