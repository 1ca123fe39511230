"""The run directory: where each step of a run writes, and state.json, the record of the steps done.

    runs/NAME/
        config.yaml                resolved config (a rerun must match it)
        state.json                 {"run_id", "cycle", "step", "finished", "stop_reason"}: last step done
        labels/                    the label store (data/labels.py)
        checkpoints/cycle=K/       model.pt, history.jsonl
        metrics/cycle=K.json       the evaluation of cycle K; metrics.jsonl is rebuilt from these
        metrics.jsonl              one line per cycle
        scores/cycle=K/            score shards (score.py)
        selections/cycle=K.parquet video_id, frame, score, rank, strategy (frame -1: a whole video)
        pseudo/cycle=K.parquet     AL-STAL: pseudo-labels of unlabelled videos by cycle K's model
        exports/cycle=K/           tasks for annotators (human oracle)
        report/                    plots and index.html

Every file is written to a temporary name and renamed, so a kill leaves each either absent or whole.
No Ray here: the oracle's import/export and the report read runs through this module.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from raylab.config import PATH_KEYS, Config, ConfigError, absolute_paths, flat_keys, load_config, read_yaml

STEPS = ("train", "evaluate", "score", "select", "annotate")  # the steps of a cycle, in order
STATE_FILE = "state.json"
CONFIG_FILE = "config.yaml"
# keys added to the config after runs were made, with the value that keeps such a run's behaviour: a saved
# config.yaml without the key resumes with this value, not with the new default
ADDED_KEYS = {
    "labels.changed_gaps": "nearest",  # 2026-12-04; before, changed gaps took the nearest label
    "labels.pseudo_masks": "copied",  # 2026-12-05 (also the default): masks stay where drawn
    "evaluation.flip": False,  # 2026-12-04 (also the default); before, clips were predicted as they are
    "evaluation.actionness_window": 1,  # 2026-12-04 (also the default); before, each frame's own actionness
    "evaluation.frame_actionness": "tube",  # 2026-12-04; before, frame detections used the tubes' threshold
    "evaluation.class_pooling": "mean",  # 2026-12-04 (also the default); before, always the clips' mean
}


class RunStateError(Exception):
    """A run directory that cannot be used as asked (not a run, another config, a pending selection)."""


class PendingAnnotation(Exception):
    """Raised by an annotate step: a human selection waits for `raylab import`; the run stops cleanly."""


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def write_parquet_atomic(path: Path, df: pd.DataFrame) -> None:
    """Write a table to `path` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(path)


@dataclass(frozen=True)
class RunPaths:
    """The paths of one run directory."""

    path: Path

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def state(self) -> Path:
        return self.path / STATE_FILE

    @property
    def labels(self) -> Path:
        return self.path / "labels"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def report(self) -> Path:
        return self.path / "report"

    def checkpoint_dir(self, cycle: int) -> Path:
        return self.path / "checkpoints" / f"cycle={cycle}"

    def cycle_metrics(self, cycle: int) -> Path:
        return self.path / "metrics" / f"cycle={cycle}.json"

    def scores(self, cycle: int) -> Path:
        return self.path / "scores" / f"cycle={cycle}"

    def selection(self, cycle: int) -> Path:
        return self.path / "selections" / f"cycle={cycle}.parquet"

    def pseudo(self, cycle: int) -> Path:
        """AL-STAL pseudo-labels of the unlabelled videos by cycle K's model (for cycle K+1's training)."""
        return self.path / "pseudo" / f"cycle={cycle}.parquet"

    def exports(self, cycle: int) -> Path:
        return self.path / "exports" / f"cycle={cycle}"


def read_state(run: Path) -> dict:
    """state.json of a run: run_id, cycle and step of the last completed step (step None: nothing yet)."""
    path = RunPaths(Path(run)).state
    if not path.is_file():
        raise RunStateError(f"{path} not found: {run} is not a run directory (start one with raylab run)")
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunStateError(f"{path} is not valid JSON: {e}") from e
    for key in ("run_id", "cycle", "step"):
        if key not in state:
            raise RunStateError(f"{path} lacks {key!r}")
    return state


def write_state(run: Path, **fields) -> dict:
    """Update state.json (atomically) with `fields`; returns the new state."""
    path = RunPaths(Path(run)).state
    state = json.loads(path.read_text()) if path.is_file() else {}
    state.update(fields)
    write_atomic(path, json.dumps(state, indent=1) + "\n")
    return state


def new_state(run: Path) -> dict:
    """The state of a run that has done nothing yet, with a fresh run_id."""
    return write_state(run, run_id=uuid.uuid4().hex, cycle=0, step=None, finished=False, stop_reason=None)


def next_step(state: dict) -> tuple[int, str]:
    """(cycle, step) that comes after the last completed one."""
    if state["step"] is None:
        return 0, STEPS[0]
    i = STEPS.index(state["step"])
    if i + 1 < len(STEPS):
        return int(state["cycle"]), STEPS[i + 1]
    return int(state["cycle"]) + 1, STEPS[0]


def run_config(run: Path, overrides: list[str] = ()) -> Config:
    """The resolved config saved in a run directory, its relative paths taken relative to the run
    directory (config.yaml holds them absolute; a relative one travels with the run when it is moved).
    Runs made before paths were saved absolute hold paths relative to where they were started: such a
    path that exists from this directory and not from the run directory is taken from here. A key
    added to the config since the run was made takes the value that keeps its behaviour (ADDED_KEYS)."""
    path = RunPaths(Path(run)).config
    if not path.is_file():
        raise RunStateError(f"{path} not found: {run} is not a run directory")
    saved_keys = flat_keys(read_yaml(path, "run config"))
    earlier = [f"{key}={value}" for key, value in ADDED_KEYS.items() if key not in saved_keys]
    saved = load_config(path, [*earlier, *overrides])
    cfg = absolute_paths(saved, Path(run))
    here = absolute_paths(saved)
    for key in PATH_KEYS:
        section, name = key.split(".")
        mine, old = getattr(getattr(cfg, section), name), getattr(getattr(here, section), name)
        if mine and not Path(mine).exists() and Path(old).exists():
            cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{name: old})})
    return cfg


def read_metrics(run: Path) -> list[dict]:
    """The lines of a run's metrics.jsonl (one per evaluated cycle), cycles ascending."""
    path = RunPaths(Path(run)).metrics
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def strategy_name(cfg: Config) -> str:
    """What a run selects by: loop.strategy for ASL, the video score (alstal.score) for AL-STAL."""
    return cfg.alstal.score if cfg.method == "alstal" else cfg.loop.strategy


def metric_value(record: dict, name: str) -> float | None:
    """A metric of a metrics.jsonl line by name ("frame_map@0.5", "video_map@0.5:0.95"); None if absent."""
    family, _, threshold = name.partition("@")
    value = (record.get("metrics") or {}).get(family, {}).get(threshold)
    return None if value is None else float(value)


def read_selection(run: Path, cycle: int) -> pd.DataFrame:
    """selections/cycle=K.parquet of a run: video_id, frame, score, rank, strategy."""
    path = RunPaths(Path(run)).selection(cycle)
    if not path.is_file():
        raise RunStateError(f"{path} not found: cycle {cycle} of {run} has no selection")
    return pd.read_parquet(path)


def pending_selection(run: Path) -> int | None:
    """The cycle whose selection waits for annotations (select done, annotate not), else None."""
    state = read_state(run)
    if state["step"] == "select":
        return int(state["cycle"])
    return None


def dataset_root(cfg: Config) -> Path:
    """The dataset directory of a config: data.root, or where SynthActions is generated (its
    spatio-temporal set for ASL, its temporal set for AL-STAL)."""
    if cfg.data.root:
        return Path(cfg.data.root)
    kind = "temporal" if cfg.method == "alstal" else "spatiotemporal"
    videos = f"-videos{cfg.data.synth_videos}" if cfg.data.synth_videos else ""
    return Path(cfg.data.synth_dir) / f"{cfg.data.synth_preset}-seed{cfg.data.synth_seed}{videos}" / kind


def ensure_dataset(cfg: Config) -> Path:
    """`dataset_root(cfg)`, generating SynthActions there first when data.root is "" and it is missing.

    A SynthActions set already there must have the number of videos the config asks for: a set made by
    an earlier raylab whose preset had another size (small: 72 videos until 2026-12-03) is refused with
    what to do, never used in its place nor overwritten."""
    root = dataset_root(cfg)
    if cfg.data.root:
        return root
    import pyarrow.parquet as pq

    from raylab.data.schema import INDEX_FILE
    from raylab.data.synthetic import PRESETS, generate, num_videos, with_videos

    try:
        preset = with_videos(PRESETS[cfg.data.synth_preset], root.name, cfg.data.synth_videos)
    except ValueError as e:  # too few videos for the preset's classes
        raise ConfigError(f"data.synth_videos: {e}") from None
    if not (root / "dataset.json").is_file():
        # overwrite: a half-written set from an interrupted generation is replaced
        generate(root.parent, preset=cfg.data.synth_preset, seed=cfg.data.synth_seed, kinds=(root.name,),
                 overwrite=True, videos=cfg.data.synth_videos)
        return root
    expected = num_videos(preset, root.name)
    found = pq.read_metadata(root / INDEX_FILE).num_rows
    if found != expected:
        raise ConfigError(
            f"{root} holds a SynthActions set of {found} videos, made by an earlier raylab; preset "
            f"{cfg.data.synth_preset!r} makes {expected} now. To go on with the {found}-video set and the "
            f"runs made on it, set data.synth_videos={found} (in a run's config.yaml for that run): the "
            f"same set is generated beside it. Or move {root.parent} away to generate the new one")
    return root


@dataclass
class RunData:
    """A run's config, paths and dataset (meta, index, gt with absolute video paths)."""

    cfg: Config
    paths: RunPaths
    root: Path
    meta: dict
    index: pd.DataFrame
    gt: pd.DataFrame
    features: pd.DataFrame | None = None  # AL-STAL: snippet features per video, once read (alstal.features)

    @property
    def train(self) -> pd.DataFrame:
        return self.index[self.index["split"] == "train"].reset_index(drop=True)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])


def load_run(run: Path, overrides: list[str] = ()) -> RunData:
    """Open an existing run directory and its dataset (nothing is generated or written); `overrides`
    (key=value) change its saved config for this reading only (`run_config`)."""
    from raylab.data.annotations import load_dataset

    cfg = run_config(run, list(overrides))
    root = dataset_root(cfg)
    if not (root / "dataset.json").is_file():
        raise RunStateError(f"dataset of run {run} not found at {root} "
                            f"(data.root in {RunPaths(Path(run)).config})")
    meta, index, gt = load_dataset(root)
    return RunData(cfg, RunPaths(Path(run)), root, meta, index, gt)
