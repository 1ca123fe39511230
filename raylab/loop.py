"""The active-learning loop on Ray: train -> evaluate -> score -> select -> annotate, and resume.

The steps are a method's (`raylab.asl` for frames, `raylab.alstal` for videos, chosen by `method`);
this module runs them in order for cycle K = 0, 1, ... until `loop.cycles` cycles are trained, the
labelling budget is spent (`loop.budget`, a fraction of the training frames or videos), or
`loop.target_metric` reaches `loop.target_value` (checked after each evaluation). Each step writes its
output atomically and only then records itself in state.json, so rerunning `raylab run` resumes after
the last completed step; a step cut short is redone from its start and, being deterministic for a
seed, gives the same output. With `loop.oracle: human` the run stops after selection until `raylab
import` appends the annotations.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pandas as pd

from raylab.config import Config, absolute_paths, flat_keys, to_dict, to_yaml
from raylab.data.labels import LabelStore
from raylab.quiet import terminal
from raylab.rundir import (
    STEPS,
    PendingAnnotation,
    RunData,
    RunPaths,
    RunStateError,
    metric_value,
    new_state,
    next_step,
    read_metrics,
    read_state,
    run_config,
    strategy_name,
    write_atomic,
    write_state,
)

log = logging.getLogger(__name__)

RESOURCE_SECTIONS = ("ray",)  # may differ on resume: where Ray runs, not what it computes
# may differ on resume too: when the run stops, not what its steps compute (a finished run can be extended)
STOP_KEYS = ("loop.cycles", "loop.budget", "loop.target_metric", "loop.target_value")


def config_differences(saved: Config, cfg: Config) -> list[str]:
    """`section.key: saved -> new` for every result-changing key that differs between two configs."""

    a, b = flat_keys(to_dict(saved)), flat_keys(to_dict(cfg))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k.split(".")[0] not in RESOURCE_SECTIONS]


def open_run(cfg: Config, run_dir: Path) -> tuple[RunData, LabelStore]:
    """A run's dataset and label store; creates the run (config.yaml, state.json, initial labels) first.

    Raises:
        RunStateError: the run directory holds a run with another config (the message lists what differs).
    """
    paths = RunPaths(Path(run_dir).resolve())  # absolute: Ray workers run in other directories
    cfg = absolute_paths(cfg)  # the run's config.yaml holds absolute paths: it works from any directory
    if paths.config.is_file():
        diff = config_differences(run_config(paths.path), cfg)
        fixed = [d for d in diff if d.split(":")[0] not in STOP_KEYS]
        if fixed:
            raise RunStateError(f"{paths.config} holds another config; a run resumes only with its own "
                                f"(except where Ray runs and when it stops: {', '.join(STOP_KEYS)}). "
                                f"Differences (saved -> now): {'; '.join(fixed)}. Use another --run-dir, "
                                "or the saved config.")
        if diff:
            log.info("run %s: stop criteria changed: %s", paths.path, "; ".join(diff))
            write_atomic(paths.config, to_yaml(cfg))
    else:
        paths.path.mkdir(parents=True, exist_ok=True)
        write_atomic(paths.config, to_yaml(cfg))
    if not paths.state.is_file():
        new_state(paths.path)
    return method_of(cfg).open_data(cfg, paths)


def method_of(cfg: Config):
    """The module of the method's steps: `prepare`, `open_data`, `STEP_FUNCTIONS`, `cycle_budget`,
    `TABLE_METRICS`."""
    if cfg.method == "alstal":
        from raylab import alstal

        return alstal
    from raylab import asl

    return asl


def stop_reason(cfg: Config, data: RunData, store: LabelStore, cycle: int) -> str | None:
    """Why the run ends after cycle K's evaluation, or None to go on."""
    record = json.loads(data.paths.cycle_metrics(cycle).read_text())
    if cfg.loop.target_metric:
        value = metric_value(record, cfg.loop.target_metric)
        if value is None:
            known = ", ".join(f"{f}@{t}" for f, v in record["metrics"].items() for t in v)
            raise RunStateError(f"loop.target_metric {cfg.loop.target_metric!r} is not in the evaluation "
                                f"(it has {known})")
        if value >= cfg.loop.target_value:
            return f"{cfg.loop.target_metric} reached {cfg.loop.target_value}"
    if cycle + 1 >= cfg.loop.cycles:
        return f"{cfg.loop.cycles} cycle{'s' if cfg.loop.cycles != 1 else ''} done"
    if method_of(cfg).cycle_budget(cfg, data, store) == 0:
        return f"labelling budget {cfg.loop.budget:.1%} spent"
    return None


def rebuild_metrics(paths: RunPaths, state: dict) -> None:
    """metrics.jsonl from metrics/cycle=K.json, with the seconds each step of the cycle took."""
    lines = []
    for cycle in sorted(int(p.stem.split("=")[1]) for p in (paths.path / "metrics").glob("cycle=*.json")):
        record = json.loads(paths.cycle_metrics(cycle).read_text())
        history = record.pop("train_history")
        record["seconds"] = state.get("seconds", {}).get(str(cycle), {})
        lines.append(json.dumps({**record, "train_history": history}))
    write_atomic(paths.metrics, "".join(line + "\n" for line in lines))


def summary_line(record: dict, table_metrics) -> str:
    """One line per evaluated cycle: labelled fraction, cost and the method's table metrics."""
    values = "  ".join(f"{header} {_fmt(metric_value(record, name))}" for name, header in table_metrics)
    return (f"cycle {record['cycle']}: labelled {record['labelled_fraction']:.2%} "
            f"(cost {record['cost']:.0f})  {values}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def run_loop(cfg: Config, run_dir: Path, progress: bool = True,
             after_cycle: Callable[[dict], None] | None = None) -> dict:
    """Run (or resume) the active-learning loop of `cfg` in `run_dir`; returns the final state.json.

    Stops when the run is finished, or after selection while a human oracle's answer is pending
    (state "finished": false, step "select"). `after_cycle(record)` is called with each cycle's
    metrics.jsonl record as soon as the cycle is evaluated (a sweep trial reports it to Tune).
    """
    from tqdm import tqdm

    data, store = open_run(cfg, Path(run_dir))
    cfg = data.cfg  # with absolute paths
    method, paths = method_of(cfg), data.paths
    state = read_state(paths.path)
    if state.get("finished"):
        reason = stop_reason(cfg, data, store, int(state["cycle"]))
        if reason:
            log.info("run %s is finished (%s)", paths.path, reason)
            return state
        state = write_state(paths.path, finished=False, stop_reason=None)  # extended: more cycles or budget
    cycle, step = next_step(state)
    if state["step"] is not None:
        log.info("resuming %s at cycle %d, step %s", paths.path, cycle, step)
    bar = None
    while True:
        if bar is None:
            bar = tqdm(total=len(STEPS), initial=STEPS.index(step), desc=f"{paths.path.name} cycle {cycle}",
                       unit="step", disable=not progress, leave=True, file=terminal())
        bar.set_postfix_str(step)
        start = time.perf_counter()
        try:
            method.STEP_FUNCTIONS[step](cfg, data, store, cycle)
        except PendingAnnotation:
            bar.close()
            print(f"{paths.path}: the selection of cycle {cycle} waits for annotators. Export it with "
                  f"`raylab export {paths.path} --format cvat|labelstudio`, then `raylab import "
                  f"{paths.path} FILE`, then `raylab run --run-dir {paths.path}`.")
            return state
        seconds = state.get("seconds", {})
        seconds.setdefault(str(cycle), {})[step] = round(time.perf_counter() - start, 2)
        state = write_state(paths.path, cycle=cycle, step=step, seconds=seconds)
        bar.update(1)
        if step in ("evaluate", "annotate"):
            rebuild_metrics(paths, state)
        if step == "evaluate":
            record = read_metrics(paths.path)[-1]
            bar.write(summary_line(record, method.TABLE_METRICS))
            reason = stop_reason(cfg, data, store, cycle)
            if reason:  # recorded before after_cycle, which may not return (Tune ends a trial there)
                state = write_state(paths.path, finished=True, stop_reason=reason)
            if after_cycle is not None:
                after_cycle(record)
            if reason:
                bar.close()
                log.info("run %s finished: %s", paths.path, reason)
                return state
        cycle, step = next_step(state)
        if step == STEPS[0]:
            bar.close()
            bar = None


# the steps of cycle 0 that no selection strategy reaches: it trains on the initial frames and evaluates
SHARED_STEPS = ("train", "evaluate")


def share_first_cycle(source: Path, cfg: Config, run_dir: Path) -> bool:
    """Start the run of `cfg` in `run_dir` with cycle 0 of the run in `source`, when the two differ in
    `loop.strategy` at most (and in where Ray runs and when they stop): cycle 0 trains on the same initial
    frames from the same seed and evaluates, so running it again repeats the source's to the last digit
    (the demo's second strategy). Copies the cycle's checkpoint and metrics (the record names the source
    under "shared_from") and records its train and evaluate steps as done, in 0 seconds (nothing ran).

    Returns False, and copies nothing, when `run_dir` has begun a cycle, `source` has not evaluated cycle
    0, the configs differ in more, or the initial frames differ.
    """
    source, paths = RunPaths(Path(source).resolve()), RunPaths(Path(run_dir).resolve())
    if paths.state.is_file() and read_state(paths.path)["step"] is not None:
        return False
    if not source.cycle_metrics(0).is_file():
        return False
    diff = [d for d in config_differences(run_config(source.path), absolute_paths(cfg))
            if d.split(":")[0] not in STOP_KEYS]
    if [d.split(":")[0] for d in diff] not in ([], ["loop.strategy"]):
        log.info("cycle 0 of %s not shared: its config differs in %s", source.path, "; ".join(diff))
        return False
    data, store = open_run(cfg, paths.path)

    def initial_frames(labels: LabelStore) -> pd.DataFrame:
        rows = labels.to_pandas().query("cycle == 0")[["video_id", "frame"]]
        return rows.sort_values(["video_id", "frame"]).reset_index(drop=True)

    if not initial_frames(store).equals(initial_frames(LabelStore(source.labels))):
        log.info("cycle 0 of %s not shared: its initial frames differ", source.path)
        return False
    shutil.copytree(source.checkpoint_dir(0), paths.checkpoint_dir(0), dirs_exist_ok=True)
    record = json.loads(source.cycle_metrics(0).read_text())
    write_atomic(paths.cycle_metrics(0), json.dumps({**record, "shared_from": str(source.path)}) + "\n")
    state = write_state(paths.path, cycle=0, step=SHARED_STEPS[-1],
                        seconds={"0": dict.fromkeys(SHARED_STEPS, 0.0)})
    rebuild_metrics(paths, state)
    reason = stop_reason(data.cfg, data, store, 0)
    if reason:
        write_state(paths.path, finished=True, stop_reason=reason)
    return True


def with_strategy(cfg: Config, strategy: str) -> Config:
    """`cfg` with another selection strategy (the demo and comparisons run one run per strategy)."""
    return replace(cfg, loop=replace(cfg.loop, strategy=strategy))


def metrics_table(runs: dict[str, list[dict]], table_metrics) -> str:
    """A text table of metrics lines: one row per run and cycle (labelled %, cost, the method's metrics)."""
    head = f"{'run':<16} {'cycle':>5} {'labelled':>9} {'cost':>7} " + \
        " ".join(f"{header:>10}" for _, header in table_metrics)
    rows = [head, "-" * len(head)]
    for label, records in runs.items():
        for r in records:
            rows.append(f"{label:<16} {r['cycle']:>5} {r['labelled_fraction']:>9.2%} {r['cost']:>7.0f} " +
                        " ".join(f"{_fmt(metric_value(r, name)):>10}" for name, _ in table_metrics))
    return "\n".join(rows)


def describe_run(run: Path) -> str:
    """What `raylab status` prints: identity, the last completed step, what comes next, the metrics."""
    run = Path(run)
    state, cfg = read_state(run), run_config(run)
    paths = RunPaths(run)
    store = LabelStore(paths.labels)
    lines = [f"run {run} (id {state['run_id']}): {cfg.name} ({cfg.method}), strategy {strategy_name(cfg)}, "
             f"oracle {cfg.loop.oracle}, seed {cfg.seed}",
             f"labels: {len(store)} frames, {store.cost():.0f} clicks, cycles {store.cycles()}"]
    if state.get("finished"):
        lines.append(f"finished: {state.get('stop_reason')}")
    elif state["step"] is None:
        lines.append("nothing done yet; `raylab run` starts at cycle 0, train")
    else:
        cycle, step = next_step(state)
        lines.append(f"last step done: cycle {state['cycle']} {state['step']}; next: cycle {cycle} {step}")
        if step == "annotate" and cfg.loop.oracle == "human" and cycle + 1 not in store.cycles():
            lines.append(f"waiting for annotators: raylab export {run} --format cvat|labelstudio; "
                         f"raylab import {run} FILE")
    records = read_metrics(run)
    if records:
        lines += ["", metrics_table({strategy_name(cfg): records}, method_of(cfg).TABLE_METRICS)]
    return "\n".join(lines)
