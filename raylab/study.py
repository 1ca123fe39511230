"""Studies (`raylab study STUDY.yaml`): a grid of whole active-learning runs and the papers' claims,
measured with paired statistics. No Ray here: raylab/tune.py runs the cells (as a sweep's trials).

    name: study_asl
    pipeline: asl_synth.yaml                # relative to this file
    set: {loop.cycles: 3}                   # every cell
    arms:                                   # optional: named sets of overrides, crossed with the grid
      apu-global: {loop.strategy: apu-global}
      masking: {loop.strategy: apu-global, labels.loss_weighting: masking}
    grid:                                   # dotted config keys -> values; `seed` is the run's seed
      seed: [0, 1, 2, 3, 4]
    claims:
      - {name: APU beats random, a: {arm: apu-global}, b: {arm: random}, metric: frame_map@0.5,
         at: 0.05, unit: frames}
      - {name: 5% reaches 90% of 100%, a: {arm: apu-global}, b: {arm: full}, metric: frame_map@0.5,
         at: 0.05, at_b: 1.0, reaches: 0.9}
    statistic: {interval: t, confidence: 0.95}
    resources: {cpus_per_trial: 1, gpus_per_trial: 0, max_concurrent: 2, max_failures: 1}

Every cell of the grid (the product of its keys, `arm` ranging over the arms) is one run. A claim
compares the cells matching `a` with those matching `b`, paired: two cells pair when they agree on
every grid key that `a` and `b` do not name (the seed above all, so the pair shares its initial
frames). Pairs that differ in another grid key (e.g. the loss, when the claim names strategies) are
claims of their own, one per value (`where:` keeps some). The effect of a pair is A - B, or A - X·B
for "A reaches X of B" (`reaches: X`), each read at labelled fraction `at` (`unit: frames`) or clicks
fraction (`unit: clicks`: clicks spent / clicks of labelling every training frame), interpolated
between cycles; `measure: relative_saving` gives instead AL-STAL's RS = (N_B - N_A) / N_B at B's level
at `at`. The claim's effect is the mean over pairs, with a Student t (or bootstrap) interval; verdict
`holds` (interval above 0), `reversed` (below 0), `inconclusive` (otherwise, or fewer than 2 pairs).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raylab.config import (
    Config,
    ConfigError,
    flat_keys,
    from_dict,
)
from raylab.sweep import (
    ARM,
    Knob,
    ObjectiveConfig,
    SchedulerConfig,
    SearchConfig,
    SweepConfig,
    TrialResources,
    _knob,
    _table_metrics,
    metric_at,
    read_trials_file,
    trial_config,
)

SEED = "seed"
UNITS = {"frames": "labelled_fraction", "clicks": "clicks_fraction"}  # claim unit -> metrics.jsonl key
MEASURES = ("difference", "relative_saving")
INTERVALS = ("t", "bootstrap")
VERDICTS = ("holds", "reversed", "inconclusive")
REACH_TOLERANCE = 1e-6  # a run "reaches" fraction `at` when its curve spans it within this slack


@dataclass(frozen=True)
class Claim:
    name: str
    a: dict[str, Any]  # grid keys (or config keys an arm sets, or `arm`) -> value: the cells of A
    b: dict[str, Any]
    metric: str  # e.g. frame_map@0.5 or map@avg
    at: float  # labelled fraction (unit frames) or clicks fraction (unit clicks) where both are read
    unit: str = "frames"  # frames | clicks
    at_b: float = 0.0  # where B is read, when not at `at` (e.g. 1.0: the fully labelled run)
    reaches: float = 0.0  # 0: "A beats B" (A - B); X > 0: "A reaches X of B" (A - X·B)
    measure: str = "difference"  # difference | relative_saving (AL-STAL Eq.11; B's level at `at`)
    where: dict[str, Any] = field(default_factory=dict)  # only cells with these grid values

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ConfigError(f"claim {self.name!r}: unit must be frames or clicks, got {self.unit!r}")
        if self.measure not in MEASURES:
            raise ConfigError(f"claim {self.name!r}: measure must be one of {', '.join(MEASURES)}")
        if not 0 < self.at <= 1 or not 0 <= self.at_b <= 1 or self.reaches < 0:
            raise ConfigError(f"claim {self.name!r}: at must be in (0, 1], at_b in [0, 1] and reaches >= 0")
        if "@" not in self.metric:
            raise ConfigError(f"claim {self.name!r}: metric looks like frame_map@0.5 or map@avg, "
                              f"got {self.metric!r}")
        if not self.a or not self.b or self.a == self.b:
            raise ConfigError(f"claim {self.name!r}: a and b must each name cells, and differ")


@dataclass(frozen=True)
class StatisticConfig:
    interval: str = "t"  # t (Student t over the paired differences) | bootstrap (percentile)
    confidence: float = 0.95
    resamples: int = 10000  # bootstrap
    seed: int = 0  # bootstrap

    def __post_init__(self):
        if self.interval not in INTERVALS or not 0 < self.confidence < 1 or self.resamples < 100:
            raise ConfigError("statistic: interval must be t or bootstrap, confidence in (0, 1), "
                              "resamples >= 100")


@dataclass(frozen=True)
class StudyResources:
    cpus_per_trial: float = 1.0  # CPUs of one cell's run (its torch threads)
    gpus_per_trial: float = 0.0  # GPUs of one cell's run
    max_concurrent: int = 0  # cells at once (0 = as many as the cluster fits)
    max_failures: int = 1  # a crashed cell is retried, resuming its run directory

    def __post_init__(self):
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0 or self.max_concurrent < 0 \
                or self.max_failures < 0:
            raise ConfigError("resources.cpus_per_trial must be > 0; gpus_per_trial, max_concurrent and "
                              "max_failures >= 0")


@dataclass(frozen=True)
class StudyConfig:
    name: str
    pipeline: Path
    base: Config  # the pipeline with `set` applied, paths absolute
    grid: tuple[Knob, ...]
    arms: dict[str, dict[str, Any]]
    claims: tuple[Claim, ...]
    set: dict[str, Any] = field(default_factory=dict)
    statistic: StatisticConfig = field(default_factory=StatisticConfig)
    resources: StudyResources = field(default_factory=StudyResources)

    @property
    def keys(self) -> list[str]:
        return [k.key for k in self.grid]

    def sweep(self) -> SweepConfig:
        """The study as a sweep: every key a grid, one sample of the grid, no scheduler (every run to
        its end). Its objective is only what Tune displays."""
        r = self.resources
        metric = self.claims[0].metric if self.claims else ""
        return SweepConfig(name=self.name, pipeline=self.pipeline, base=self.base, set=self.set,
                           space=self.grid, objective=ObjectiveConfig(metric=metric, kind="auc"),
                           search=SearchConfig(algorithm="grid", num_samples=1,
                                               max_concurrent=r.max_concurrent),
                           scheduler=SchedulerConfig(name="none"),
                           resources=TrialResources(r.cpus_per_trial, r.gpus_per_trial, r.max_failures),
                           arms=self.arms)

    def cells(self) -> list[dict[str, Any]]:
        """Every cell's grid values (the grid's product, keys in file order)."""
        return [dict(zip(self.keys, values)) for values in itertools.product(*(k.values for k in self.grid))]


SECTIONS = {"statistic": StatisticConfig, "resources": StudyResources}


def load_study(path: str | Path, overrides: list[str] = ()) -> StudyConfig:
    """Read and check a study YAML (module doc); `overrides` are `key=value` on the study file itself
    (e.g. grid.seed=[0,1], set.loop.cycles=2).

    Raises:
        ConfigError: an unknown key, a grid value or arm the config refuses, a claim naming no cell or
            a metric the method does not have; naming the file and the key.
    """
    path = Path(path)
    tree, pipeline, sets, base, sections = read_trials_file(
        path, overrides, "study", {"arms", "grid", "claims"}, SECTIONS)
    arms = _arms(tree.get("arms") or {}, base, path)
    grid = _grid(tree.get("grid") or {}, arms, base, path)
    study = StudyConfig(name=str(tree.get("name") or path.stem), pipeline=pipeline, base=base, grid=grid,
                        arms=arms, claims=(), set=sets, **sections)
    claims = tree.get("claims") or []
    if not isinstance(claims, list):
        raise ConfigError(f"{path}: claims must be a list of {{name, a, b, metric, at, ...}}")
    return StudyConfig(**{**study.__dict__, "claims": tuple(_claim(c, i, study, path)
                                                             for i, c in enumerate(claims))})


def _arms(arms: Any, base: Config, path: Path) -> dict[str, dict[str, Any]]:
    if not isinstance(arms, dict):
        raise ConfigError(f"{path}: arms must map a name to overrides, e.g. "
                          "random: {loop.strategy: random}")
    out = {}
    for name, overrides in arms.items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"{path}: arms.{name} must be a mapping of config keys, got {overrides!r}")
        values = flat_keys(overrides)
        try:
            trial_config(base, values)
        except ConfigError as e:
            raise ConfigError(f"{path}: arms.{name}: {e}") from e
        out[str(name)] = values
    return out


def _grid(grid: Any, arms: dict, base: Config, path: Path) -> tuple[Knob, ...]:
    if not isinstance(grid, dict):
        raise ConfigError(f"{path}: grid must map config keys to lists of values")
    if ARM in grid:
        raise ConfigError(f"{path}: grid.arm is made from `arms:`; list the arms there")
    knobs = [_knob(key, {"grid": values}, base, path, "grid") for key, values in grid.items()]
    if arms:
        set_by_arms = {k for overrides in arms.values() for k in overrides}
        both = sorted(set_by_arms & set(grid))
        if both:
            raise ConfigError(f"{path}: {', '.join(both)} is set by arms and by the grid; choose one")
        knobs.insert(0, Knob(ARM, "grid", tuple(arms)))
    if not knobs:
        raise ConfigError(f"{path}: the study has no grid and no arms: nothing to compare")
    if SEED not in grid:
        raise ConfigError(f"{path}: grid.seed is missing: claims are paired over seeds "
                          "(e.g. seed: [0, 1, 2])")
    return tuple(knobs)


def _claim(spec: Any, i: int, study: StudyConfig, path: Path) -> Claim:
    where = f"{path}: claims[{i}]"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where} must be a mapping {{name, a, b, metric, at, ...}}")
    spec = {"name": f"claim {i}", **spec}
    for side in ("a", "b", "where"):
        if side in spec and not isinstance(spec[side], dict):
            raise ConfigError(f"{where}.{side} must map grid keys to values, got {spec[side]!r}")
        if side in spec:
            spec[side] = flat_keys(spec[side])
    claim = from_dict(Claim, spec, where)
    if claim.metric.split("@")[0] not in {m.split("@")[0] for m, _ in _table_metrics(study.base)}:
        raise ConfigError(f"{where}: metric {claim.metric!r} is not a metric of method {study.base.method}")
    cells = [cell_view(study, c) for c in study.cells()]
    for side, sel in (("a", {**claim.a, **claim.where}), ("b", {**claim.b, **claim.where})):
        if SEED in sel:
            raise ConfigError(f"{where}.{side} names the seed: claims pair the runs of each seed")
        if not any(_matches(view, sel) for view in cells):
            raise ConfigError(f"{where}.{side} {sel} matches no cell of the grid (keys: "
                              f"{', '.join(sorted(set().union(*cells)))})")
    return claim


# ---- cells and their values ---------------------------------------------------------------------------


def cell_view(study: StudyConfig, params: dict[str, Any]) -> dict[str, Any]:
    """A cell's grid values with the config keys its arm sets: what claims select cells by."""
    return {**study.arms.get(params.get(ARM), {}), **params}


def _matches(view: dict, selector: dict) -> bool:
    return all(k in view and view[k] == v for k, v in selector.items())


def arm_label(study: StudyConfig, params: dict[str, Any]) -> str:
    """The name of a cell's arm in curves and tables: its grid values but the seed."""
    rest = {k: v for k, v in params.items() if k != SEED}
    if len(rest) == 1:
        return str(next(iter(rest.values())))
    return ", ".join(f"{k}={v}" for k, v in rest.items())


def value_at(records: list[dict], metric: str, at: float, unit: str) -> float:
    """The metric of a run at fraction `at` of `unit`, interpolated between cycles; NaN when the run's
    curve does not span `at` (it stopped before, or started after)."""
    if not records:
        return math.nan
    key = UNITS[unit]
    xs = [r.get(key, math.nan) for r in records]
    if not (min(xs) - REACH_TOLERANCE <= at <= max(xs) + REACH_TOLERANCE):
        return math.nan
    return metric_at(records, metric, at, key)


def relative_saving_at(records_a: list[dict], records_b: list[dict], metric: str, at: float,
                       unit: str) -> float:
    """AL-STAL's RS = (N_B - N_A) / N_B at B's level at `at`: N the fraction each run needs to reach
    it; NaN when A never reaches it (or B is not read at `at`)."""
    from raylab.eval.tal import amount_to_reach
    from raylab.sweep import curve

    level = value_at(records_b, metric, at, unit)
    if math.isnan(level):
        return math.nan
    xa, ya = curve(records_a, metric, UNITS[unit])
    xb, yb = curve(records_b, metric, UNITS[unit])
    n_a, n_b = amount_to_reach(xa, ya, level), amount_to_reach(xb, yb, level)
    return math.nan if n_a is None or not n_b else (n_b - n_a) / n_b
