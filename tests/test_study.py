"""Studies: the paired statistics on hand-made numbers, claims paired by seed, the grid as a sweep, arms
of one seed sharing their initial frames, budgets in clicks (no Ray); `raylab study` on the smoke
study end to end, and run again once finished (subprocesses)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from raylab.claims import evaluate_claim, paired_interval, verdict
from raylab.config import ConfigError
from raylab.study import StatisticConfig, load_study, relative_saving_at, value_at
from tests.test_tune import clean_env, trials_command

REPO = Path(__file__).resolve().parents[1]
SMOKE_STUDY = REPO / "pipelines" / "study_smoke.yaml"


# ---- the statistics ----------------------------------------------------------------------------------


def test_a_clear_difference_holds_a_reversed_one_is_reversed_noise_is_inconclusive():
    holds = [0.10, 0.12, 0.09, 0.11, 0.10]
    mean, lo, hi = paired_interval(holds)
    # t_{0.975, 4} = 2.7764; sd of the five = 0.011402
    assert mean == pytest.approx(0.104)
    assert (lo, hi) == pytest.approx((0.104 - 2.7764451 * 0.0114018 / math.sqrt(5),
                                      0.104 + 2.7764451 * 0.0114018 / math.sqrt(5)), abs=1e-6)
    assert verdict(lo, hi) == "holds"
    assert verdict(*paired_interval([-x for x in holds])[1:]) == "reversed"
    noise = [0.05, -0.04, 0.02, -0.03, 0.01]
    assert verdict(*paired_interval(noise)[1:]) == "inconclusive"
    boot = StatisticConfig(interval="bootstrap", resamples=2000)
    assert verdict(*paired_interval(holds, boot)[1:]) == "holds"
    assert verdict(*paired_interval(noise, boot)[1:]) == "inconclusive"
    mean, lo, hi = paired_interval([0.3])  # one pair: no interval
    assert mean == 0.3 and math.isnan(lo) and math.isnan(hi) and verdict(lo, hi) == "inconclusive"


def curve(points, clicks=None):
    """metrics.jsonl lines of (labelled fraction, f-mAP) points; clicks fractions optional."""
    clicks = clicks or [x for x, _ in points]
    return [{"cycle": i, "labelled_fraction": x, "clicks_fraction": c, "metrics": {"frame_map": {"0.5": y}}}
            for i, ((x, y), c) in enumerate(zip(points, clicks))]


def test_a_curve_is_read_at_a_fraction_of_frames_or_clicks_and_not_past_its_end():
    records = curve([(0.01, 0.2), (0.03, 0.4), (0.05, 0.5)], clicks=[0.02, 0.06, 0.10])
    assert value_at(records, "frame_map@0.5", 0.02, "frames") == pytest.approx(0.3)
    assert value_at(records, "frame_map@0.5", 0.04, "clicks") == pytest.approx(0.3)
    assert math.isnan(value_at(records, "frame_map@0.5", 0.07, "frames"))  # the run stopped before
    # RS: B reaches its level at 0.03 (0.4); A (0.3 -> 0.7 over 0.01 -> 0.03) at 0.015: RS = 1/2
    a = curve([(0.01, 0.3), (0.03, 0.7)])
    assert relative_saving_at(a, records, "frame_map@0.5", 0.03, "frames") == pytest.approx(0.5)


def write_study(tmp_path, text: str) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(f"pipeline: {REPO / 'pipelines' / 'smoke.yaml'}\n{text}")
    return path


def hand_made_cells(study, effect_by_loss: dict[str, list[float]]):
    """Cells of a strategy x loss x seed study: random's curve is flat at 0.5, APU's is 0.5 + effect."""
    cells = []
    for params in study.cells():
        effect = effect_by_loss[params["labels.loss_weighting"]][params["seed"]]
        y = 0.5 + (effect if params["loop.strategy"] == "apu-global" else 0.0)
        cells.append({"params": params, "records": curve([(0.1, 0.4), (0.2, y)])})
    return cells


def test_claims_pair_by_seed_and_are_evaluated_per_value_of_the_keys_they_do_not_name(tmp_path):
    study = load_study(write_study(tmp_path, """
grid:
  loop.strategy: [apu-global, random]
  labels.loss_weighting: [mgw, masking]
  seed: [0, 1, 2, 3]
claims:
  - {name: APU beats random, a: {loop.strategy: apu-global}, b: {loop.strategy: random},
     metric: frame_map@0.5, at: 0.2}
  - {name: APU reaches 90%, a: {loop.strategy: apu-global}, b: {loop.strategy: random},
     metric: frame_map@0.5, at: 0.2, reaches: 0.9, where: {labels.loss_weighting: masking}}
"""))
    assert len(study.cells()) == 16
    cells = hand_made_cells(study, {"mgw": [0.10, 0.11, 0.09, 0.10], "masking": [-0.02, 0.01, -0.01, 0.02]})
    mgw, masking = evaluate_claim(study, study.claims[0], cells)
    assert mgw["claim"] == "APU beats random [labels.loss_weighting=mgw]" and mgw["seeds"] == 4
    assert mgw["effect"] == pytest.approx(0.10) and mgw["verdict"] == "holds"
    assert masking["effect"] == pytest.approx(0.0) and masking["verdict"] == "inconclusive"
    assert [p["seed"] for p in mgw["pairs"]] == [0, 1, 2, 3]
    (reach,) = evaluate_claim(study, study.claims[1], cells)  # `where` keeps one loss: one result
    # A - 0.9 B = (0.5 + e) - 0.45 > 0 for every seed
    assert reach["claim"] == "APU reaches 90%" and reach["verdict"] == "holds"
    assert reach["effect"] == pytest.approx(0.05)
    # a seed whose run stopped short is left out and said so; one pair left: no interval
    short = [c if c["params"]["seed"] > 0 or c["params"]["loop.strategy"] == "random" else
             {**c, "records": c["records"][:1]} for c in cells if c["params"]["seed"] < 2]
    result = evaluate_claim(study, study.claims[1], short)[0]
    assert result["seeds"] == 1 and result["ci"] is None and result["verdict"] == "inconclusive"
    assert "seed(s) 0 left out" in result["reason"] and "at least 2" in result["reason"]


def test_the_study_is_a_grid_sweep_without_scheduler_and_arms_expand_to_their_overrides(tmp_path):
    from raylab.tune import param_space

    study = load_study(write_study(tmp_path, """
arms:
  apu: {loop.strategy: apu-global}
  masking: {loop.strategy: apu-global, labels: {loss_weighting: masking}}
grid: {seed: [0, 1, 2]}
resources: {cpus_per_trial: 2, max_concurrent: 3}
"""), ["set.loop.cycles=1"])
    sweep = study.sweep()
    assert (sweep.search.algorithm, sweep.search.num_samples, sweep.scheduler.name) == ("grid", 1, "none")
    assert sweep.search.max_concurrent == 3 and sweep.resources.cpus_per_trial == 2
    assert param_space(sweep) == {"arm": {"grid_search": ["apu", "masking"]},
                                  "seed": {"grid_search": [0, 1, 2]}}
    assert len(study.cells()) == 6 and study.base.loop.cycles == 1
    values = sweep.config_values({"arm": "masking", "seed": 2})
    assert values == {"loop.strategy": "apu-global", "labels.loss_weighting": "masking", "seed": 2}
    # study.csv: one column per grid key, `arm` once
    from raylab.study_report import study_table

    record = {"cycle": 0, "labelled_fraction": 0.1, "labelled_frames": 5, "cost": 8.0, "clicks_fraction": 0.1,
              "metrics": {"frame_map": {"0.5": 0.25}, "video_map": {"0.2": 0.5, "0.5": 0.125}}}
    table = study_table(study, [{"trial": "t0", "params": {"arm": "apu", "seed": 0}, "arm": "apu",
                                 "records": [record], "finished": True, "run_dir": "r"}])
    assert list(table.columns).count("arm") == 1 and table.loc[0, "arm"] == "apu"
    assert table.loc[0, "frame_map@0.5"] == 0.25 and table.loc[0, "seed"] == 0


@pytest.mark.parametrize("text, message", [
    ("grid: {loop.strategy: [apu-global]}", "grid.seed is missing"),
    ("grid: {seed: [0], loop.strateg: [random]}", "grid.loop.strateg value 'random': .*unknown key"),
    ("grid: {seed: [0]}\narms: {x: {loop.strategy: best}}", "arms.x: .*loop.strategy must be one of"),
    ("grid: {seed: [0], loop.strategy: [random]}\narms: {x: {loop.strategy: random}}",
     "set by arms and by the grid"),
    ("grid: {seed: [0]}\nclaims: [{a: {seed: 0}, b: {seed: 1}, metric: frame_map@0.5, at: 0.1}]",
     "names the seed"),
    ("grid: {seed: [0], loop.strategy: [random]}\nclaims: [{a: {loop.strategy: apu-global}, "
     "b: {loop.strategy: random}, metric: frame_map@0.5, at: 0.1}]", r"claims\[0\].a .* matches no cell"),
    ("grid: {seed: [0], loop.strategy: [random, apu-global]}\nclaims: [{a: {loop.strategy: apu-global}, "
     "b: {loop.strategy: random}, metric: map@avg, at: 0.1}]", "not a metric of method asl"),
    ("grid: {seed: [0], loop.strategy: [random, apu-global]}\nclaims: [{a: {loop.strategy: apu-global}, "
     "b: {loop.strategy: random}, metric: frame_map@0.5, at: 0.1, unit: euros}]",
     "unit must be frames or clicks"),
    ("grid: {seed: [0]}\nclaim: []", "unknown key.*claim"),
    ("grid: {seed: [0]}\nset: {loop.oracle: human}", "oracle simulated"),
    ("grid: {seed: [0]}\nresources: {cpus_per_trial: 0}", "cpus_per_trial must be > 0"),
])
def test_bad_study_files_are_refused_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_study(write_study(tmp_path, text))


# ---- runs of a seed share their initial frames; budgets in clicks --------------------------------------


@pytest.fixture(scope="module")
def tiny_synth(tmp_path_factory):
    from raylab.data.synthetic import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out / "tiny-seed0", "tiny", seed=0, kinds=("spatiotemporal",))
    return out


def open_arm(synth: Path, run: Path, *overrides: str):
    from raylab.config import load_config
    from raylab.loop import open_run

    cfg = load_config(REPO / "pipelines" / "smoke.yaml", [f"data.synth_dir={synth}", *overrides])
    return open_run(cfg, run)


def test_arms_of_one_seed_start_from_the_same_frames_and_another_seed_does_not(tiny_synth, tmp_path):
    def initial(name, *overrides):
        _, store = open_arm(tiny_synth, tmp_path / name, *overrides)
        return store.to_pandas()[["video_id", "frame", "cost"]].sort_values(["video_id", "frame"]) \
            .reset_index(drop=True)

    apu = initial("apu", "loop.strategy=apu-global", "seed=3")
    pd.testing.assert_frame_equal(apu, initial("random", "loop.strategy=random", "seed=3"))
    pd.testing.assert_frame_equal(apu, initial("masking", "labels.loss_weighting=masking", "seed=3",
                                               "loop.budget_unit=clicks"))
    assert not apu.equals(initial("seed4", "loop.strategy=apu-global", "seed=4"))


def test_a_budget_in_clicks_labels_the_ranked_frames_until_the_clicks_are_spent(tiny_synth, tmp_path):
    from raylab.asl import cycle_budget, select_step, total_clicks
    from raylab.oracle import reveal_frames
    from raylab.rundir import read_selection

    data, store = open_arm(tiny_synth, tmp_path / "run", "loop.strategy=equidistant",
                           "loop.budget_unit=clicks", "loop.step_fraction=0.05")
    cfg = data.cfg
    clicks = cycle_budget(cfg, data, store)
    assert clicks == pytest.approx(0.05 * total_clicks(cfg, data)) and total_clicks(cfg, data) > 0
    select_step(cfg, data, store, 0)
    picked = read_selection(data.paths.path, 0)
    costs = reveal_frames(data.gt, picked, cfg.loop.clicks_per_actor)["cost"].to_numpy()
    assert 0 < costs.sum() <= clicks + 1e-9
    # the next frame of the same ranking (equidistant's picks are greedy: a longer list starts with the
    # shorter one) would have passed the budget
    from raylab.acquisition.select import select_frames

    train = data.train
    everything = pd.DataFrame({"video_id": np.repeat(train["video_id"].to_numpy(), train["num_frames"]),
                               "frame": np.concatenate([np.arange(n) for n in train["num_frames"]]),
                               "uncertainty": 0.0})
    longer = select_frames(everything, store.to_pandas()[["video_id", "frame"]],
                           dict(zip(train["video_id"], train["num_frames"])), len(picked) + 20, "equidistant")
    assert longer.head(len(picked))[["video_id", "frame"]].equals(picked[["video_id", "frame"]])
    more = reveal_frames(data.gt, longer, cfg.loop.clicks_per_actor)["cost"].to_numpy()
    assert more[: len(picked) + 1].sum() > clicks


# ---- raylab study in subprocesses ------------------------------------------------------------------------


def study_command(out: Path, synth: Path) -> list[str]:
    return trials_command("study", SMOKE_STUDY, out, synth)


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    """`raylab study pipelines/study_smoke.yaml` run to its end without a fault."""
    tmp = tmp_path_factory.mktemp("study")
    done = subprocess.run(study_command(tmp / "study", tmp / "synth"), cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return tmp, done.stdout


@pytest.mark.slow
def test_smoke_study_writes_its_claims_curves_table_and_report(smoke_study):
    tmp, stdout = smoke_study
    out = tmp / "study"
    doc = json.loads((out / "study.json").read_text())
    assert len(doc["cells"]) == 4 and all(c["finished"] and c["cycles"] == 2 for c in doc["cells"])
    assert [c["claim"] for c in doc["claims"]] == ["APU beats random", "APU reaches 90% of random, per click"]
    for claim in doc["claims"]:
        assert claim["verdict"] in ("holds", "reversed", "inconclusive")
        assert set(claim) >= {"claim", "metric", "at", "effect", "ci", "verdict", "seeds"}
        assert claim["verdict"] + (f" ({claim['reason']})" if claim["reason"] else "") in stdout
    first = doc["claims"][0]
    assert first["seeds"] == 2
    assert first["effect"] == pytest.approx(np.mean([p["a"] - p["b"] for p in first["pairs"]]))
    # the effect is read off the runs' own curves at 15% labelled
    for pair in first["pairs"]:
        run = next(c["run_dir"] for c in doc["cells"]
                   if c["params"] == {"loop.strategy": "apu-global", "seed": pair["seed"]})
        lines = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
        x = [r["labelled_fraction"] for r in lines]
        assert x[0] < 0.15 <= x[1]  # 10.3% and 15.3%: read between the two cycles
        y = [r["metrics"]["frame_map"]["0.5"] for r in lines]
        assert pair["a"] == pytest.approx(np.interp(0.15, x, y))
    curves = doc["curves"]["frame_map@0.5"]
    assert set(curves) == {"apu-global", "random"} and curves["random"]["seeds"] == [2, 2]
    table = pd.read_csv(out / "study.csv")
    assert len(table) == 8 and {"clicks", "clicks_fraction", "frame_map@0.5", "arm"} <= set(table.columns)
    page = (out / "report" / "index.html").read_text()
    assert "APU beats random" in page and page.count("<img") == 3  # frame_map@0.5, video_map@0.2, @0.5


@pytest.mark.slow
def test_a_finished_study_runs_nothing_again_and_rewrites_the_same_claims(smoke_study):
    """The same command on a finished study: Tune's restore finds every trial done, no run directory is
    touched, and the claims are computed again from the runs to the same result. (A study's trials are
    a sweep's, `raylab.tune.run_trials`: their restore after a SIGKILL of the driver mid-way is
    tests/test_tune.py's killed-sweep test.)"""
    out, synth = smoke_study[0] / "study", smoke_study[0] / "synth"
    claims = json.loads((out / "study.json").read_text())["claims"]
    before = {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.jsonl")}
    again = subprocess.run(study_command(out, synth), cwd=REPO, env=clean_env(), capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming study_smoke from" in again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.glob("runs/*/metrics.jsonl")} == before
    assert json.loads((out / "study.json").read_text())["claims"] == claims
