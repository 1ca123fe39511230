"""Sweeps of raylab's knobs, without Ray: the sweep YAML, each trial's config, the objective, results.

A sweep YAML names a base pipeline, overrides for every trial, the knobs to search and how:

    name: sweep_asl
    pipeline: asl_synth.yaml            # relative to this file
    set: {loop.cycles: 3}               # every trial (dotted keys or nested sections)
    objective: {metric: frame_map@0.5, kind: auc, budget: 0.05}
    search: {algorithm: random, num_samples: 12, max_concurrent: 2, seed: 0}
    scheduler: {name: asha, grace_period: 1, reduction_factor: 2}
    resources: {cpus_per_trial: 1, gpus_per_trial: 0}
    space:
      labels.sigma: {uniform: [0.5, 4.0]}
      loop.lam: {grid: [0.25, 0.5, 0.75]}
      score.tau: {choice: [0.8, 0.9, 0.95]}

Each trial is a whole active-learning experiment (raylab/tune.py runs them on Ray Tune). Its
objective after every cycle is computed here from its metrics.jsonl records:

- auc: the area under the metric-vs-labelled-fraction curve (trapezoids between evaluated cycles),
  divided by the width of the labelled-fraction range, i.e. the curve's mean height. The range runs
  from the first cycle's fraction to `budget` when set (a curve that ends earlier is held at its last
  value, so set loop.cycles / loop.budget to reach it), else to the last cycle's.
- at_budget: the metric at labelled fraction `budget`, interpolated between the cycles around it
  (held at the last value until the curve gets there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from raylab.config import (
    PATH_KEYS,  # noqa: F401 (where it was first defined)
    Config,
    ConfigError,
    absolute_paths,
    apply_override,
    flat_keys,
    from_dict,
    load_config,
    read_yaml,
    set_dotted,
    to_dict,
)
from raylab.rundir import metric_value, read_metrics, read_state

SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
ALGORITHMS = ("grid", "random", "optuna")
OBJECTIVES = ("auc", "at_budget")
SCHEDULERS = ("asha", "none")
# config keys holding paths (config.PATH_KEYS) are made absolute before trials start: Tune runs each trial
# in a folder of its own
TRIAL_FILE = "trial.json"  # in each trial's run directory: trial id and its knob values
ARM = "arm"  # a study's knob naming one of its arms (a set of overrides), not a config key


@dataclass(frozen=True)
class ObjectiveConfig:
    metric: str = ""  # e.g. frame_map@0.5 or map@avg; "" = the method's first table metric
    kind: str = "auc"  # auc | at_budget (module doc)
    budget: float = 0.0  # labelled fraction: where at_budget reads the curve / where auc ends (0 = its end)

    def __post_init__(self):
        if self.kind not in OBJECTIVES:
            raise ConfigError(f"objective.kind must be one of {', '.join(OBJECTIVES)}, got {self.kind!r}")
        if self.metric and "@" not in self.metric:
            raise ConfigError(f"objective.metric looks like frame_map@0.5 or map@avg, got {self.metric!r}")
        if not 0 <= self.budget <= 1 or (self.kind == "at_budget" and self.budget == 0):
            raise ConfigError(f"objective.budget must be in (0, 1] for at_budget, [0, 1] for auc, "
                              f"got {self.budget}")


@dataclass(frozen=True)
class SearchConfig:
    algorithm: str = "random"  # grid (every combination of grid knobs) | random | optuna (TPE sampler)
    num_samples: int = 8  # trials (grid: repeats of the whole grid)
    max_concurrent: int = 0  # trials at once (0 = as many as the cluster's resources allow)
    seed: int = 0  # seed of the search algorithm's sampling

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"search.algorithm must be one of {', '.join(ALGORITHMS)}, "
                              f"got {self.algorithm!r}")
        if self.num_samples < 1 or self.max_concurrent < 0:
            raise ConfigError("search.num_samples must be >= 1 and search.max_concurrent >= 0")


@dataclass(frozen=True)
class SchedulerConfig:
    name: str = "asha"  # asha (stops poor trials after a cycle) | none (every trial runs to its end)
    grace_period: int = 1  # cycles every trial runs before ASHA may stop it
    reduction_factor: float = 2.0  # ASHA keeps the top 1/reduction_factor of the trials at each rung

    def __post_init__(self):
        if self.name not in SCHEDULERS:
            raise ConfigError(f"scheduler.name must be asha or none, got {self.name!r}")
        if self.grace_period < 1 or self.reduction_factor <= 1:
            raise ConfigError("scheduler.grace_period must be >= 1 and scheduler.reduction_factor > 1")


@dataclass(frozen=True)
class TrialResources:
    cpus_per_trial: float = 1.0  # CPUs of one trial: its torch threads (training, scoring, decoding)
    gpus_per_trial: float = 0.0  # GPUs of one trial; > 0 trains and scores on it
    max_failures: int = 1  # a trial that crashes is retried this often; it resumes its run directory

    def __post_init__(self):
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0 or self.max_failures < 0:
            raise ConfigError("resources.cpus_per_trial must be > 0, gpus_per_trial and max_failures >= 0")


@dataclass(frozen=True)
class Knob:
    key: str  # dotted config key, e.g. labels.sigma
    kind: str  # one of SPACE_KINDS
    values: tuple  # grid / choice: the values; uniform / loguniform / randint: (low, high)


@dataclass(frozen=True)
class SweepConfig:
    name: str
    pipeline: Path  # the base pipeline (absolute)
    base: Config  # the pipeline with `set` applied and paths made absolute: what every trial starts from
    set: dict[str, Any] = field(default_factory=dict)
    space: tuple[Knob, ...] = ()
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    resources: TrialResources = field(default_factory=TrialResources)
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)  # a study's named arms (raylab/study.py)

    def config_values(self, params: dict[str, Any]) -> dict[str, Any]:
        """A trial's dotted config keys and values: its knobs, with the knob `arm` (a study's) replaced
        by the overrides of the arm it names."""
        values = {k: v for k, v in params.items() if k != ARM}
        return {**self.arms.get(params.get(ARM), {}), **values}

    @property
    def metric(self) -> str:
        from raylab.loop import method_of

        return self.objective.metric or method_of(self.base).TABLE_METRICS[0][0]


SECTIONS = {"objective": ObjectiveConfig, "search": SearchConfig, "scheduler": SchedulerConfig,
            "resources": TrialResources}


def load_sweep(path: str | Path, overrides: list[str] = ()) -> SweepConfig:
    """Read and check a sweep YAML (module doc); `overrides` are `key=value` on the sweep file itself
    (e.g. search.num_samples=2, set.loop.cycles=2).

    Raises:
        ConfigError: an unknown key, a knob that is not a config key or whose values the config
            refuses, an algorithm that cannot search the space; naming the file and the key.
    """
    path = Path(path)
    tree, pipeline, sets, base, sections = read_trials_file(path, overrides, "sweep", {"space"}, SECTIONS)
    space = tuple(_knob(key, spec, base, path) for key, spec in (tree.get("space") or {}).items())
    if not space:
        raise ConfigError(f"{path}: `space:` names no knob to sweep")
    sweep = SweepConfig(name=str(tree.get("name") or path.stem), pipeline=pipeline, base=base, set=sets,
                        space=space, **sections)
    _check_algorithm(sweep, path)
    metric_family = sweep.metric.split("@")[0]
    if metric_family not in {m.split("@")[0] for m, _ in _table_metrics(base)}:
        raise ConfigError(f"{path}: objective.metric {sweep.metric!r} is not a metric of method "
                          f"{base.method}")
    return sweep


def read_trials_file(path: Path, overrides: list[str], kind: str, keys: set[str], sections: dict):
    """What a sweep file and a study file share: the YAML with `overrides` applied, only `name`,
    `pipeline`, `set`, `keys` and `sections` known, the base pipeline (relative to the file) with `set`
    applied and paths absolute, a simulated oracle, each section read into its dataclass.

    Returns:
        (tree, pipeline path, set as flat keys, base Config, {section: dataclass}).
    """
    tree = read_yaml(path, kind)
    for item in overrides:
        apply_override(tree, item, "--set")
    known = {"name", "pipeline", "set", *keys, *sections}
    unknown = sorted(set(tree) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if "pipeline" not in tree:
        raise ConfigError(f"{path}: needs `pipeline:` (the base pipeline YAML, relative to this file)")
    pipeline = (path.parent / str(tree["pipeline"])).resolve()
    sets = flat_keys(tree.get("set") or {})
    base = absolute_paths(load_config(pipeline, values=sets))
    if base.loop.oracle != "simulated":
        raise ConfigError(f"{path}: {kind} runs need loop.oracle simulated (no annotator answers a run)")
    values = {name: from_dict(cls, tree.get(name) or {}, f"{path}: {name}") for name, cls in sections.items()}
    return tree, pipeline, sets, base, values


def _table_metrics(cfg: Config):
    from raylab.loop import method_of

    return method_of(cfg).TABLE_METRICS


def _knob(key: str, spec: Any, base: Config, path: Path, section: str = "space") -> Knob:
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in SPACE_KINDS:
        raise ConfigError(f"{path}: {section}.{key} must be one of {{grid: [...]}}, {{choice: [...]}}, "
                          f"{{uniform: [low, high]}}, {{loguniform: [low, high]}}, {{randint: [low, high]}}; "
                          f"got {spec!r}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{path}: {section}.{key}.{kind} needs a non-empty list, got {values!r}")
    if kind in ("uniform", "loguniform", "randint"):
        if len(values) != 2 or not values[0] < values[1]:
            raise ConfigError(f"{path}: {section}.{key}.{kind} needs [low, high] with low < high, "
                              f"got {values}")
        if kind == "loguniform" and values[0] <= 0:
            raise ConfigError(f"{path}: {section}.{key}.loguniform needs low > 0, got {values[0]}")
        if kind == "randint":
            values = [values[0], values[1] - 1]  # Tune's randint excludes high; both ends are checked
    for value in values:  # every value (or both ends) must make a valid config
        try:
            trial_config(base, {key: value})
        except ConfigError as e:
            raise ConfigError(f"{path}: {section}.{key} value {value!r}: {e}") from e
    return Knob(key, kind, tuple(spec[kind]))


def _check_algorithm(sweep: SweepConfig, path: Path) -> None:
    kinds = {k.kind for k in sweep.space}
    if sweep.search.algorithm == "grid" and kinds - {"grid"}:
        raise ConfigError(f"{path}: search.algorithm grid needs every knob as {{grid: [...]}}; "
                          f"use random or optuna for {', '.join(sorted(kinds - {'grid'}))}")
    if sweep.search.algorithm == "optuna" and "grid" in kinds:
        raise ConfigError(f"{path}: search.algorithm optuna samples its knobs; write grid knobs as "
                          "{choice: [...]}")


def trial_config(base: Config, params: dict[str, Any], resources: TrialResources | None = None,
                 name: str = "") -> Config:
    """The config of one trial: `base` with the knob values `params` (dotted keys); with `resources`,
    also run in process on the trial's own CPUs / GPUs (raylab/tune.py)."""
    values = dict(params)
    if resources is not None:
        gpu = resources.gpus_per_trial > 0
        values.update({"ray.in_process": True, "train.use_gpu": gpu,
                       "score.gpus_per_actor": resources.gpus_per_trial if gpu else 0.0})
    if name:
        values["name"] = name
    tree = to_dict(base)
    for section in tree.values():  # tuples in the saved tree (detector widths) are lists in YAML
        if isinstance(section, dict):
            section.update({k: list(v) for k, v in section.items() if isinstance(v, tuple)})
    return from_dict(Config, _apply(tree, values), "trial")


def _apply(tree: dict, values: dict[str, Any]) -> dict:
    for key, value in values.items():
        set_dotted(tree, key, value, "trial")
    return tree


# ---- the objective ----------------------------------------------------------------------------------


def curve(records: list[dict], metric: str, x: str = "labelled_fraction") -> tuple[np.ndarray, np.ndarray]:
    """(x, metric) of every evaluated cycle, in cycle order; x is a key of the metrics.jsonl lines
    (labelled_fraction, or clicks_fraction: the clicks spent / the clicks of labelling every frame)."""
    xs = np.array([r.get(x, math.nan) for r in records], dtype=np.float64)
    ys = np.array([metric_value(r, metric) for r in records], dtype=np.float64)  # None (absent) -> NaN
    return xs, ys


def metric_at(records: list[dict], metric: str, at: float, x: str = "labelled_fraction") -> float:
    """The metric where the curve's x equals `at`, interpolated linearly between the cycles around it
    (held at the first / last value outside the curve)."""
    xs, ys = curve(records, metric, x)
    return float(np.interp(at, xs, ys))


def objective_value(records: list[dict], objective: ObjectiveConfig, metric: str) -> float:
    """The sweep objective of a trial after its evaluated cycles `records` (module doc)."""
    if not records:
        raise ValueError("no evaluated cycle yet")
    x, y = curve(records, metric)
    if np.isnan(y).any():
        raise ValueError(f"metric {metric} is missing from some cycles' metrics")
    if objective.kind == "at_budget":
        return metric_at(records, metric, objective.budget)
    end = objective.budget or x[-1]
    if end <= x[0]:
        return float(y[0])
    inside = x < end
    xs = np.append(x[inside], end)
    ys = np.append(y[inside], np.interp(end, x, y))
    return float(np.trapezoid(ys, xs) / (end - x[0]))


# ---- results ----------------------------------------------------------------------------------------


def results_table(sweep: SweepConfig, runs_dir: Path) -> pd.DataFrame:
    """One row per trial (run directory under `runs_dir` with a trial.json): trial, the knob values,
    cycles evaluated, last labelled fraction, last metric, objective, finished; best objective first
    among finished trials, then the stopped ones."""
    import json

    rows = []
    for trial_file in sorted(Path(runs_dir).glob(f"*/{TRIAL_FILE}")):
        run = trial_file.parent
        trial = json.loads(trial_file.read_text())
        records = read_metrics(run)
        state = read_state(run) if (run / "state.json").is_file() else {}
        x, y = curve(records, sweep.metric) if records else (np.zeros(0), np.zeros(0))
        rows.append({"trial": trial["trial_id"], **trial["params"], "cycles": len(records),
                     "labelled_fraction": float(x[-1]) if len(x) else math.nan,
                     sweep.metric: float(y[-1]) if len(y) else math.nan,
                     "objective": objective_value(records, sweep.objective, sweep.metric) if records
                     else math.nan,
                     "finished": bool(state.get("finished")), "run_dir": str(run)})
    columns = ["trial", *(k.key for k in sweep.space), "cycles", "labelled_fraction", sweep.metric,
               "objective", "finished", "run_dir"]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["finished", "objective"], ascending=[False, False],
                             na_position="last").reset_index(drop=True)


def best_trial(table: pd.DataFrame) -> pd.Series | None:
    """The finished trial with the highest objective (None when no trial finished)."""
    done = table[table["finished"] & table["objective"].notna()]
    return None if done.empty else done.sort_values("objective", ascending=False).iloc[0]


def format_table(table: pd.DataFrame, sweep: SweepConfig, rows: int | None = None) -> str:
    """The results as text: knob values, cycles, last metric, objective, finished / stopped early."""
    shown = table.head(rows) if rows else table
    keys = [k.key for k in sweep.space]
    head = f"{'trial':<14}" + "".join(f"{k:>22}" for k in keys) + \
        f"{'cycles':>8}{'labelled':>10}{sweep.metric:>16}{'objective':>11}  status"
    lines = [head, "-" * len(head)]
    for _, r in shown.iterrows():
        status = "finished" if r["finished"] else "stopped early" if r["cycles"] else "not started"
        lines.append(f"{r['trial']:<14}" + "".join(f"{_value(r[k]):>22}" for k in keys) +
                     f"{r['cycles']:>8}{r['labelled_fraction']:>10.2%}{r[sweep.metric]:>16.4f}"
                     f"{r['objective']:>11.4f}  {status}")
    return "\n".join(lines)


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
