"""The active-learning cycle of ASL on Ray: train -> evaluate -> score -> select -> annotate, and resume.

A run starts from a random `labels.init_fraction` of the training frames (the initial append, cycle 0)
and repeats, for cycle K = 0, 1, ...:

    train     Ray Train on every labelled frame (MGW loss)         checkpoints/cycle=K/model.pt
    evaluate  frame-/video-mAP on the test split                   metrics/cycle=K.json, metrics.jsonl
    score     MC-dropout actor pool over the unlabelled frames     scores/cycle=K/   (skipped by random
              and equidistant selection, which never read scores)
    select    `loop.strategy` picks step_fraction of all frames    selections/cycle=K.parquet
    annotate  the oracle answers; one atomic label-store append    labels/ (cycle K+1)

until `loop.cycles` cycles are trained, `loop.budget` is labelled, or `loop.target_metric` reaches
`loop.target_value` (checked after each evaluation). Each step writes its output atomically and only
then records itself in state.json, so rerunning `raylab run` resumes after the last completed step;
a step cut short is redone from its start and, being deterministic for a seed, gives the same output.
With `loop.oracle: human` the run stops after selection until `raylab import` appends the annotations.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from raylab.config import Config, to_dict, to_yaml
from raylab.data.annotations import load_dataset
from raylab.data.clips import annotated_clips
from raylab.data.labels import LabelStore
from raylab.data.stream import clip_dataset, clip_table, init_ray
from raylab.data.targets import group_labels
from raylab.oracle import reveal_frames
from raylab.rundir import (
    STEPS,
    RunData,
    RunPaths,
    RunStateError,
    dataset_root,
    metric_value,
    new_state,
    next_step,
    read_metrics,
    read_state,
    run_config,
    write_atomic,
    write_parquet_atomic,
    write_state,
)

log = logging.getLogger(__name__)

RESOURCE_SECTIONS = ("ray",)  # may differ on resume: where Ray runs, not what it computes
# may differ on resume too: when the run stops, not what its steps compute (a finished run can be extended)
STOP_KEYS = ("loop.cycles", "loop.budget", "loop.target_metric", "loop.target_value")


def ensure_dataset(cfg: Config) -> Path:
    """The spatio-temporal dataset directory of the config, generating SynthActions when root is ""."""
    root = dataset_root(cfg)
    if not cfg.data.root and not (root / "dataset.json").is_file():
        out = root.parent
        from raylab.data.synthetic import generate

        log.info("generating SynthActions (%s, seed %d) in %s",
                 cfg.data.synth_preset, cfg.data.synth_seed, out)
        generate(out, preset=cfg.data.synth_preset, seed=cfg.data.synth_seed, overwrite=True)
    return root


def initial_requests(index: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """A uniformly random `fraction` of all frames of the videos in `index` (at least one frame)."""
    offsets = np.concatenate([[0], np.cumsum(index["num_frames"].to_numpy())])
    count = max(1, int(round(fraction * offsets[-1])))
    picks = np.sort(np.random.default_rng(seed).choice(offsets[-1], count, replace=False))
    video = np.searchsorted(offsets, picks, side="right") - 1
    return pd.DataFrame({"video_id": index["video_id"].to_numpy()[video], "frame": picks - offsets[video]})


def config_differences(saved: Config, cfg: Config) -> list[str]:
    """`section.key: saved -> new` for every result-changing key that differs between two configs."""

    def flat(tree: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in tree.items():
            if isinstance(value, dict):
                out.update(flat(value, f"{prefix}{key}."))
            else:
                out[f"{prefix}{key}"] = value
        return out

    a, b = flat(to_dict(saved)), flat(to_dict(cfg))
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and k.split(".")[0] not in RESOURCE_SECTIONS]


def open_run(cfg: Config, run_dir: Path) -> tuple[RunData, LabelStore]:
    """A run's dataset and label store; creates the run (config.yaml, state.json, initial labels) first.

    Raises:
        RunStateError: the run directory holds a run with another config (the message lists what differs).
    """
    paths = RunPaths(Path(run_dir).resolve())  # absolute: Ray workers run in other directories
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
    root = ensure_dataset(cfg)
    meta, index, gt = load_dataset(root)
    data = RunData(cfg, paths, root, meta, index, gt)
    store = LabelStore(paths.labels, index=index)
    if 0 not in store.cycles():
        requests = initial_requests(data.train, cfg.labels.init_fraction, cfg.seed)
        store.append(reveal_frames(gt, requests, cfg.loop.clicks_per_actor), cycle=0, source="init")
    return data, store


# ---- the clip streams of a cycle -------------------------------------------------------------------


def clip_stream(cfg: Config, clips: pd.DataFrame, root: Path, index: pd.DataFrame, store: LabelStore):
    """The Ray Data stream of `clips` with the run's labels, at the config's clip size, σ and weighting."""
    c = cfg.clips
    table = clip_table(clips, index, root, group_labels(store.table()))
    return clip_dataset(table, (c.height, c.width), cfg.labels.sigma, cfg.labels.loss_weighting,
                        c.clips_per_task, cfg.ray.decode_num_cpus)


def training_dataset(cfg: Config, data: RunData, store: LabelStore, cycle: int):
    """The Ray Data clip stream of a cycle: clips around every labelled frame, in a seeded random order."""
    c = cfg.clips
    clips = annotated_clips(data.train, store.labelled_frames(), c.length, c.stride, c.clips_per_annotation,
                            seed=cfg.seed + cycle)
    clips = clips.sample(frac=1.0, random_state=cfg.seed + cycle).reset_index(drop=True)
    ds = clip_stream(cfg, clips, data.root, data.index, store)
    # read once per epoch inside Ray Train: its progress is the epoch log, not a Ray Data bar per epoch
    ds.context.enable_progress_bars = False
    ds.context.print_on_execution_start = False
    return ds


# ---- the steps -------------------------------------------------------------------------------------


def train_step(cfg: Config, data: RunData, store: LabelStore, cycle: int) -> None:
    from raylab.train import train_cycle

    init_ray(cfg.ray.address, cfg.ray.num_cpus)
    train_cycle(cfg, data.paths.path, cycle, training_dataset(cfg, data, store, cycle), len(data.classes))


def evaluate_step(cfg: Config, data: RunData, store: LabelStore, cycle: int) -> None:
    """frame-/video-mAP of the cycle's detector on the test split (ACT protocol) -> metrics/cycle=K.json."""
    from raylab.eval.predict import predict_dataset
    from raylab.eval.stad import evaluate_stad
    from raylab.train import MODEL_FILE, load_detector

    test = data.index[data.index["split"] == "test"].reset_index(drop=True)
    checkpoint = data.paths.checkpoint_dir(cycle)
    doc = predict_dataset(load_detector(checkpoint / MODEL_FILE), test,
                          data.gt[data.gt["video_id"].isin(test["video_id"])], data.classes, data.root,
                          cfg.clips.length, (cfg.clips.height, cfg.clips.width), batch=cfg.clips.batch_size)
    metrics = evaluate_stad(doc)
    total = int(data.train["num_frames"].sum())
    history = checkpoint / "history.jsonl"
    record = {"cycle": cycle, "labelled_fraction": store.labelled_fraction(total),
              "labelled_frames": len(store), "cost": store.cost(),
              "metrics": {"frame_map": metrics["frame_map"], "video_map": metrics["video_map"]},
              "train_history": [json.loads(line) for line in history.read_text().splitlines()]
              if history.is_file() else []}
    write_atomic(data.paths.cycle_metrics(cycle), json.dumps(record) + "\n")


def score_step(cfg: Config, data: RunData, store: LabelStore, cycle: int) -> None:
    from raylab.acquisition.select import UNSCORED
    from raylab.score import score_cycle

    if cfg.loop.strategy in UNSCORED:
        log.info("cycle %d: %s selection reads no scores; scoring skipped", cycle, cfg.loop.strategy)
        return
    score_cycle(cfg, data, store, cycle)


def cycle_budget(cfg: Config, data: RunData, store: LabelStore) -> int:
    """Frames to select this cycle: step_fraction of the training frames, never past loop.budget."""
    total = int(data.train["num_frames"].sum())
    step = max(1, int(round(cfg.loop.step_fraction * total)))
    return max(0, min(step, int(np.floor(cfg.loop.budget * total + 1e-9)) - len(store), total - len(store)))


def select_step(cfg: Config, data: RunData, store: LabelStore, cycle: int) -> None:
    from raylab.acquisition.select import UNSCORED, select_frames

    train = data.train
    if cfg.loop.strategy in UNSCORED:  # every frame is a candidate; the score column is not read
        frames = np.concatenate([np.arange(n) for n in train["num_frames"]])
        scores = pd.DataFrame({"video_id": np.repeat(train["video_id"].to_numpy(), train["num_frames"]),
                               "frame": frames, "uncertainty": 0.0})
    else:
        scores = pd.read_parquet(data.paths.scores(cycle))
    picked = select_frames(scores, store.to_pandas()[["video_id", "frame"]],
                           dict(zip(train["video_id"], train["num_frames"])), cycle_budget(cfg, data, store),
                           cfg.loop.strategy, sigma=cfg.labels.sigma, lam=cfg.loop.lam, seed=cfg.seed + cycle,
                           min_gap=cfg.loop.min_gap)
    write_parquet_atomic(data.paths.selection(cycle), picked)


class PendingAnnotation(Exception):
    """A human selection waits for `raylab import`; the run stops cleanly until then."""


def annotate_step(cfg: Config, data: RunData, store: LabelStore, cycle: int) -> None:
    """The oracle's answer to cycle K's selection, appended as cycle K+1 (once: a rerun finds it there)."""
    if cycle + 1 in store.cycles():
        return
    selection = pd.read_parquet(data.paths.selection(cycle))
    if cfg.loop.oracle == "human":
        raise PendingAnnotation(cycle)
    rows = reveal_frames(data.gt, selection, cfg.loop.clicks_per_actor)
    store.append(rows, cycle=cycle + 1, source="oracle")


STEP_FUNCTIONS = {"train": train_step, "evaluate": evaluate_step, "score": score_step,
                  "select": select_step, "annotate": annotate_step}
assert tuple(STEP_FUNCTIONS) == STEPS


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
    if cycle_budget(cfg, data, store) == 0:
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


def summary_line(record: dict) -> str:
    m = record["metrics"]
    return (f"cycle {record['cycle']}: labelled {record['labelled_fraction']:.2%} "
            f"({record['labelled_frames']} frames, {record['cost']:.0f} clicks)  "
            f"f-mAP@0.5 {m['frame_map']['0.5']:.3f}  v-mAP@0.2 {m['video_map']['0.2']:.3f}  "
            f"v-mAP@0.5 {m['video_map']['0.5']:.3f}")


def run_loop(cfg: Config, run_dir: Path, progress: bool = True) -> dict:
    """Run (or resume) the active-learning loop of `cfg` in `run_dir`; returns the final state.json.

    Stops when the run is finished, or after selection while a human oracle's answer is pending
    (state "finished": false, step "select").
    """
    from tqdm import tqdm

    data, store = open_run(cfg, Path(run_dir))
    paths = data.paths
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
                       unit="step", disable=not progress, leave=True)
        bar.set_postfix_str(step)
        start = time.perf_counter()
        try:
            STEP_FUNCTIONS[step](cfg, data, store, cycle)
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
            bar.write(summary_line(read_metrics(paths.path)[-1]))
            reason = stop_reason(cfg, data, store, cycle)
            if reason:
                bar.close()
                log.info("run %s finished: %s", paths.path, reason)
                return write_state(paths.path, finished=True, stop_reason=reason)
        cycle, step = next_step(state)
        if step == STEPS[0]:
            bar.close()
            bar = None


def with_strategy(cfg: Config, strategy: str) -> Config:
    """`cfg` with another selection strategy (the demo and comparisons run one run per strategy)."""
    return replace(cfg, loop=replace(cfg.loop, strategy=strategy))


def metrics_table(runs: dict[str, list[dict]]) -> str:
    """A text table of metrics lines: one row per run and cycle (labelled %, cost, f-mAP, v-mAP)."""
    head = f"{'run':<16} {'cycle':>5} {'labelled':>9} {'clicks':>7} {'f-mAP@0.5':>10} {'v-mAP@0.2':>10} " \
           f"{'v-mAP@0.5':>10}"
    rows = [head, "-" * len(head)]
    for label, records in runs.items():
        for r in records:
            m = r["metrics"]
            rows.append(f"{label:<16} {r['cycle']:>5} {r['labelled_fraction']:>9.2%} {r['cost']:>7.0f} "
                        f"{m['frame_map']['0.5']:>10.3f} {m['video_map']['0.2']:>10.3f} "
                        f"{m['video_map']['0.5']:>10.3f}")
    return "\n".join(rows)


def describe_run(run: Path) -> str:
    """What `raylab status` prints: identity, the last completed step, what comes next, the metrics."""
    run = Path(run)
    state, cfg = read_state(run), run_config(run)
    paths = RunPaths(run)
    store = LabelStore(paths.labels)
    lines = [f"run {run} (id {state['run_id']}): {cfg.name}, strategy {cfg.loop.strategy}, "
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
        lines += ["", metrics_table({cfg.loop.strategy: records})]
    return "\n".join(lines)
