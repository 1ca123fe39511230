"""AL-STAL's steps of the active-learning cycle: whole videos, the temporal localizer, TPE / TCI.

    train     Ray Train on feature windows of the labelled videos (ground truth) and of the unlabelled
              videos with pseudo-labels from cycle K-1's model           checkpoints/cycle=K/model.pt
    evaluate  mAP at tIoU thresholds on the test split (ActivityNet's evaluation)  metrics/cycle=K.json
    score     actor pool over the unlabelled videos: MC-dropout class distributions -> TPE or TCI ->
              aggregation -> one score per video; the same pass keeps the model's confident segments
              as pseudo-labels                                  scores/cycle=K/, pseudo/cycle=K.parquet
    select    the top-k videos (k = alstal.step_fraction of the training videos), or k at random
                                                                selections/cycle=K.parquet (frame -1)
    annotate  the oracle reveals the selected videos' segments  labels/ (cycle K+1, one row per video)

Snippet features come from `features.dir` (precomputed, e.g. THUMOS'14 I3D) or are extracted once into
the dataset folder and shared by every run on it. `raylab.loop` runs the steps and resumes them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from raylab.acquisition.temporal import initial_videos, select_videos, video_budget
from raylab.config import Config, ConfigError
from raylab.data.annotations import load_dataset
from raylab.data.labels import LabelStore
from raylab.data.stream import init_ray
from raylab.oracle import reveal_videos
from raylab.rundir import (
    STEPS,
    RunData,
    RunPaths,
    RunStateError,
    ensure_dataset,
    write_atomic,
    write_parquet_atomic,
)

log = logging.getLogger(__name__)

TABLE_METRICS = (("map@0.3", "mAP@0.3"), ("map@0.5", "mAP@0.5"), ("map@0.7", "mAP@0.7"),
                 ("map@avg", "mAP avg"))
SCORE_FILE = "scores.parquet"


def open_data(cfg: Config, paths: RunPaths) -> tuple[RunData, LabelStore]:
    """The temporal dataset and the label store; labels the initial random videos on first use."""
    if cfg.loop.oracle != "simulated":
        raise ConfigError("AL-STAL runs use the simulated oracle: the human round trip (raylab export / "
                          "import) carries ASL's frame boxes, not temporal segments")
    root = ensure_dataset(cfg)
    meta, index, gt = load_dataset(root)
    if meta.get("kind") != "temporal":
        raise RunStateError(f"method alstal needs a temporal dataset; {root} is {meta.get('kind')!r}")
    data = RunData(cfg, paths, root, meta, index, gt)
    store = LabelStore(paths.labels, index=index)
    if 0 not in store.cycles():
        picked = initial_videos(data.train["video_id"].tolist(), cfg.alstal.init_fraction, cfg.seed)
        store.append(reveal_videos(gt, picked, cfg.alstal.cost_per_video), cycle=0, source="init")
    return data, store


# ---- features and the model config they fix -------------------------------------------------------------


def feature_folder(cfg: Config, root: Path) -> Path:
    """features.dir, or the folder inside dataset `root` where features of this encoder setting live."""
    f = cfg.features
    if f.dir:
        return Path(f.dir)
    name = f.encoder if not f.encoder_weights else f"{f.encoder}-{Path(f.encoder_weights).stem}"
    return root / "features" / f"{name}-{f.snippet_frames}x{f.snippet_stride}-{f.height}x{f.width}"


def prepare(cfg: Config) -> Path:
    """What every run of `cfg` shares, made once before a sweep's trials start: the dataset, and its
    snippet features unless `features.dir` holds them (videos already done are skipped)."""
    root = ensure_dataset(cfg)
    _extract_features(cfg, root, load_dataset(root)[1])
    return root


def _extract_features(cfg: Config, root: Path, index: pd.DataFrame) -> None:
    """Extract the features of `index`'s videos into the dataset, unless `features.dir` holds them."""
    from raylab.features import extract_features

    if cfg.features.dir:
        return
    init_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.in_process)
    s = cfg.score
    extract_features(root, index, feature_folder(cfg, root), cfg.features, actors=s.actors,
                     cpus_per_actor=s.cpus_per_actor, gpus_per_actor=s.gpus_per_actor,
                     in_process=cfg.ray.in_process)


def features(cfg: Config, data: RunData) -> pd.DataFrame:
    """The snippet features of every video (extracted on first use, then read back); kept on `data`."""
    from raylab.features import load_features

    if data.features is None:
        folder = feature_folder(cfg, data.root)
        _extract_features(cfg, data.root, data.index)  # the dataset is loaded already
        feats = load_features(folder, data.index, cfg.features, allow_missing=True)
        missing = ~data.index["video_id"].isin(feats["video_id"])
        if missing.any():  # broken videos: the run goes on with the rest (load_features logged why)
            log.warning("%d of %d videos have no features and are left out of the run", int(missing.sum()),
                        len(data.index))
            data.index = data.index[~missing].reset_index(drop=True)
            data.gt = data.gt[data.gt["video_id"].isin(data.index["video_id"])].reset_index(drop=True)
        data.features = feats
    return data.features


def model_config(cfg: Config, feats: pd.DataFrame) -> Config:
    """`cfg` with localizer.feature_dim set to the features' D (0 in the YAML means exactly that)."""
    dim = int(feats["dim"].iloc[0])
    if cfg.localizer.feature_dim not in (0, dim):
        raise ConfigError(f"localizer.feature_dim is {cfg.localizer.feature_dim} but the features have "
                          f"D = {dim}")
    return replace(cfg, localizer=replace(cfg.localizer, feature_dim=dim))


def labelled_fraction(data: RunData, store: LabelStore) -> float:
    """Labelled training videos / all training videos."""
    return len(store.labelled_videos()) / max(len(data.train), 1)


def training_segments(data: RunData, store: LabelStore, cycle: int) -> tuple[pd.DataFrame, list[str]]:
    """Segments and videos of cycle K's training: labelled videos with their annotated segments, and
    unlabelled training videos with the pseudo-labels of cycle K-1's model (videos with none are left out)."""
    rows = [(r["video_id"], s["t_start"], s["t_end"], s["label"], "gt")
            for r in store.table().to_pylist() for s in r["segments"]]
    labelled = set(store.labelled_videos())
    videos = set(labelled)
    pseudo_path = data.paths.pseudo(cycle - 1)
    if cycle > 0 and pseudo_path.is_file():
        pseudo = pd.read_parquet(pseudo_path)
        pseudo = pseudo[~pseudo["video_id"].isin(labelled)]
        rows += [(v, a, b, int(c), "pseudo") for v, a, b, c in
                 zip(pseudo["video_id"], pseudo["t_start"], pseudo["t_end"], pseudo["label"])]
        videos |= set(pseudo["video_id"])
    segments = pd.DataFrame(rows, columns=["video_id", "t_start", "t_end", "label", "source"])
    ordered = [v for v in data.train["video_id"] if v in videos]  # dataset order
    return segments, ordered


# ---- the steps ------------------------------------------------------------------------------------------


def train_step(cfg: Config, data: RunData, store: LabelStore, cycle: int) -> None:
    from raylab.localize import train_localizer_cycle, training_windows

    feats = features(cfg, data)
    mcfg = model_config(cfg, feats)
    segments, videos = training_segments(data, store, cycle)
    log.info("cycle %d: training on %d videos (%d labelled), %d segments (%d pseudo)", cycle, len(videos),
             len(store.labelled_videos()), len(segments), int((segments["source"] == "pseudo").sum()))
    init_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.in_process)
    dataset = training_windows(mcfg, feats, segments, videos, seed=cfg.seed + cycle)
    train_localizer_cycle(mcfg, data.paths.path, cycle, dataset, len(data.classes))


def evaluate_step(cfg: Config, data: RunData, store: LabelStore, cycle: int) -> None:
    """mAP at the preset's tIoU thresholds on the test split -> metrics/cycle=K.json."""
    from raylab.localize import evaluate_videos
    from raylab.train import MODEL_FILE

    feats = features(cfg, data)
    test = data.index.loc[data.index["split"] == "test", "video_id"].tolist()
    checkpoint = data.paths.checkpoint_dir(cycle)
    result = evaluate_videos(model_config(cfg, feats), feats, checkpoint / MODEL_FILE, data.gt, test,
                             data.classes)
    labelled = store.labelled_videos()
    frames = dict(zip(data.index["video_id"], data.index["num_frames"]))
    history = checkpoint / "history.jsonl"
    record = {"cycle": cycle, "labelled_fraction": labelled_fraction(data, store),
              "labelled_videos": len(labelled), "labelled_frames": int(sum(frames[v] for v in labelled)),
              "cost": store.cost(),
              "clicks_fraction": store.cost() / max(len(data.train) * cfg.alstal.cost_per_video, 1e-9),
              "metrics": {"map": {**result["map"], "avg": result["average_map"]}},
              "train_history": [json.loads(line) for line in history.read_text().splitlines()]
              if history.is_file() else []}
    write_atomic(data.paths.cycle_metrics(cycle), json.dumps(record) + "\n")


def unlabelled_videos(data: RunData, store: LabelStore) -> list[str]:
    labelled = set(store.labelled_videos())
    return [v for v in data.train["video_id"] if v not in labelled]


def score_step(cfg: Config, data: RunData, store: LabelStore, cycle: int) -> None:
    """Video scores (TPE / TCI; NaN for random) and pseudo-labels of the unlabelled training videos."""
    from raylab.localize import score_videos
    from raylab.train import MODEL_FILE

    feats = features(cfg, data)
    init_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.in_process)
    checkpoint = data.paths.checkpoint_dir(cycle) / MODEL_FILE
    scores, pseudo = score_videos(model_config(cfg, feats), feats, checkpoint, unlabelled_videos(data, store))
    write_parquet_atomic(data.paths.pseudo(cycle), pseudo)
    write_parquet_atomic(data.paths.scores(cycle) / SCORE_FILE, scores)


def cycle_budget(cfg: Config, data: RunData, store: LabelStore) -> int:
    """Videos to select this cycle: alstal.step_fraction of the training videos, never past loop.budget."""
    total, done = len(data.train), len(store.labelled_videos())
    step = video_budget(total, cfg.alstal.step_fraction)
    return max(0, min(step, int(np.floor(cfg.loop.budget * total + 1e-9)) - done, total - done))


def select_step(cfg: Config, data: RunData, store: LabelStore, cycle: int) -> None:
    scores = pd.read_parquet(data.paths.scores(cycle) / SCORE_FILE)
    strategy = "random" if cfg.alstal.score == "random" else "top-k"
    picked = select_videos(scores, store.labelled_videos(), cycle_budget(cfg, data, store), strategy,
                           seed=cfg.seed + cycle)
    picked = picked.assign(frame=-1, strategy=cfg.alstal.score)
    columns = ["video_id", "frame", "score", "rank", "strategy"]
    write_parquet_atomic(data.paths.selection(cycle), picked[columns])


def annotate_step(cfg: Config, data: RunData, store: LabelStore, cycle: int) -> None:
    """The oracle reveals the selected videos' segments, appended as cycle K+1 (once)."""
    if cycle + 1 in store.cycles():
        return
    selection = pd.read_parquet(data.paths.selection(cycle))
    rows = reveal_videos(data.gt, selection["video_id"].tolist(), cfg.alstal.cost_per_video)
    store.append(rows, cycle=cycle + 1, source="oracle")


STEP_FUNCTIONS = {"train": train_step, "evaluate": evaluate_step, "score": score_step,
                  "select": select_step, "annotate": annotate_step}
assert tuple(STEP_FUNCTIONS) == STEPS
