"""MC-dropout scoring of the unlabelled frames with a Ray Data actor pool, in shards that survive a kill.

The training videos are tiled densely (every frame owned by exactly one clip; clip g is the g-th clip of
the tiling of all training videos in index order, `clips.clip_offsets`). The tiling is cut into blocks
of `clips.clips_per_task` clips. Decode tasks make and decode the clips of a block
(`stream.tile_dataset`: the driver ships clip ranges, never a clip table), and a pool of `MCScorer`
actors (`map_batches` with a callable class, one detector per actor loaded once from the cycle's
checkpoint) scores each block — MC dropout with the encoder once and the decoder T times, then ASL's
frame uncertainty (Eq.1 with τ), pixel entropy and foreground fraction of every owned, unlabelled frame
— and writes the block's rows as one shard, committed atomically (a temporary name, fsync, rename) under
a name that says which clips it covers: `clips-<start>-<stop>.parquet`.

Resuming: the shards accumulate in scores/.cycle=K.partial/ next to `_signature.json` (checkpoint
digest, MC and clip settings, training videos, labelled frames). A scoring step killed at any moment
leaves whole shards only; rerun, it scores just the clips no committed shard covers, provided the
signature is unchanged (otherwise it starts afresh). Once every clip is covered the folder is renamed
to scores/cycle=K/ (with `_scoring.json`, what this run did), so scores/cycle=K is absent or whole.

Scores are deterministic per clip: clip b's dropout masks come from its own seed (`clip_seeds`: its
video and first frame) through `models.mc.per_sample_seeds`, whatever the batch, the pool size, the
order in which blocks arrive or which run scored it; and the scorer cuts its batches inside a block,
so a block scored again (a retried actor task, a resumed run) is the same computation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import resource
import shutil
import time
import uuid
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from raylab.acquisition.frame import frame_scores
from raylab.config import Config

log = logging.getLogger(__name__)

SCORE_COLUMNS = ("video_id", "frame", "uncertainty", "entropy", "fg_fraction")
SIGNATURE_FILE = "_signature.json"  # what the shards of a partial folder were scored with
SUMMARY_FILE = "_scoring.json"  # what the run that completed the table did (clips scored, resumed, speed)
_SHARD = re.compile(r"clips-(\d+)-(\d+)\.parquet")


def clip_seeds(video_ids, frames) -> list[int]:
    """The MC-dropout seed of each clip: from its video and first frame only (unique in a tiling)."""
    return [zlib.crc32(f"{v}:{int(f[0])}".encode()) for v, f in zip(video_ids, frames)]


def frame_rows(batch: dict, fg_probs: np.ndarray, tau: float) -> dict[str, np.ndarray]:
    """Score rows of the owned, unlabelled frames of a batch.

    Args:
        batch: a decoded clip batch (data/stream.py): video_id [B], frames [B, T], owned [B, T],
            annotated [B, T].
        fg_probs: [trials, B, T, H, W] MC-dropout foreground probabilities.
    """
    b_idx, t_idx = np.nonzero(batch["owned"] & ~batch["annotated"])  # [N] each
    scores = frame_scores(fg_probs[:, b_idx, t_idx], tau)  # fg_probs[...]: [trials, N, H, W]
    return {"video_id": np.asarray(batch["video_id"])[b_idx].astype(object),
            "frame": batch["frames"][b_idx, t_idx].astype(np.int32),
            **{k: scores[k].astype(np.float32) for k in SCORE_COLUMNS[2:]}}


# ---- shards ------------------------------------------------------------------------------------------


def shard_name(start: int, stop: int) -> str:
    """File name of the shard holding the rows of clips start..stop-1 of the tiling."""
    return f"clips-{start:010d}-{stop:010d}.parquet"


def committed_ranges(folder: Path) -> list[tuple[int, int]]:
    """(start, stop) clip ranges of the committed shards in `folder`, sorted."""
    if not folder.is_dir():
        return []
    found = (_SHARD.fullmatch(p.name) for p in folder.iterdir())
    return sorted((int(m[1]), int(m[2])) for m in found if m)


def missing_ranges(total: int, block: int, covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The clip ranges of 0..total-1 that no range of `covered` holds, cut at multiples of `block`: one
    range per block that nothing covers, and what is left of a block that a shard covers in part."""
    mask = np.ones(total, dtype=bool)
    for a, b in covered:
        mask[a:b] = False
    edges = np.flatnonzero(np.diff(np.concatenate([[False], mask, [False]]).astype(np.int8)))
    out = []
    for a, b in zip(edges[::2].tolist(), edges[1::2].tolist()):
        cuts = [a, *range((a // block + 1) * block, b, block), b]
        out.extend(zip(cuts[:-1], cuts[1:]))
    return out


def _column(name: str, values: np.ndarray) -> pa.Array:
    if values.dtype == object:  # ids: strings, typed even when empty so that every shard has one schema
        return pa.array(values.tolist(), pa.string())
    return pa.array(values)


def write_shard(folder: Path, start: int, stop: int, rows: dict[str, np.ndarray]) -> int:
    """Commit the rows of clips start..stop-1 as one shard: written under a temporary name, synced, then
    renamed (a kill leaves the shard whole or absent). Returns its size in bytes."""
    table = pa.table({k: _column(k, np.asarray(v)) for k, v in rows.items()})
    path = folder / shard_name(start, stop)
    tmp = folder / f".{path.name}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        pq.write_table(table, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path.stat().st_size


class MCScorer:
    """`map_batches` callable: one detector per actor; MC dropout over each block of decoded clips, whose
    rows it commits as a shard. Returns one record per shard: clip_start, clip_stop, frames (rows),
    bytes, peak_rss_mb (this actor's)."""

    def __init__(self, checkpoint: str, trials: int, tau: float, out_dir: str, batch_size: int,
                 block_clips: int, use_gpu: bool = False):
        import torch

        from raylab.models.mc import enable_mc_dropout
        from raylab.train import load_detector

        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.model = enable_mc_dropout(load_detector(Path(checkpoint), self.device))
        self.trials, self.tau, self.out = trials, tau, Path(out_dir)
        self.batch_size, self.block_clips = batch_size, block_clips

    def score(self, batch: dict) -> dict[str, np.ndarray]:
        """Score rows of one batch of decoded clips (`frame_rows`)."""
        import torch

        from raylab.models.detector import clips_to_tensor
        from raylab.models.mc import mc_forward

        with torch.no_grad():
            clips = np.array(batch["clip"])  # a writable copy: Ray hands the block's arrays read-only
            fg_probs, _ = mc_forward(self.model, clips_to_tensor(clips, self.device), self.trials,
                                     seed=clip_seeds(batch["video_id"], batch["frames"]))
        return frame_rows(batch, fg_probs.float().cpu().numpy(), self.tau)

    def __call__(self, clips: dict) -> dict:
        records = []
        for start, stop in _runs(clips["clip_index"], self.block_clips):
            part = {k: v[start:stop] for k, v in clips.items()}
            batches = [self.score({k: v[i:i + self.batch_size] for k, v in part.items()})
                       for i in range(0, stop - start, self.batch_size)]
            rows = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
            first, last = int(part["clip_index"][0]), int(part["clip_index"][-1])
            size = write_shard(self.out, first, last + 1, rows)
            records.append((first, last + 1, len(rows["frame"]), size))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        cols = np.array(records, dtype=np.int64).reshape(-1, 4)
        return {"clip_start": cols[:, 0], "clip_stop": cols[:, 1], "frames": cols[:, 2], "bytes": cols[:, 3],
                "peak_rss_mb": np.full(len(records), peak), "anon_rss_mb": np.full(len(records), _anon_mb())}


def _anon_mb() -> float:
    """This process's anonymous resident memory now (MB; NaN off Linux). Unlike the peak RSS it leaves
    out the pages of Ray's shared object store that the process has touched, which grow with the data
    that went through it whether or not anything is kept."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("RssAnon:"))
    except (OSError, StopIteration):
        return float("nan")


def _runs(clip_index: np.ndarray, block: int) -> list[tuple[int, int]]:
    """Row ranges of consecutive clips within one tiling block: normally the whole input (one block)."""
    g = np.asarray(clip_index, dtype=np.int64)
    cut = np.flatnonzero((np.diff(g) != 1) | (np.diff(g // block) != 0)) + 1
    bounds = [0, *cut.tolist(), len(g)]
    return list(zip(bounds[:-1], bounds[1:]))


def score_dataset(clips, checkpoint: Path, cfg: Config, out_dir: Path):
    """The scoring stage on top of a tiling dataset (`stream.tile_dataset`): an actor pool writing
    shards to `out_dir`; its rows are the shard records (`MCScorer`)."""
    import ray.data

    s = cfg.score
    if s.retry_on_errors and not cfg.ray.in_process:
        ray.data.DataContext.get_current().actor_task_retry_on_errors = True
    # One block per call, so that the scorer cuts the same batches whatever order the blocks arrive in.
    # Ray Data requires an integer batch size with GPUs: a block's clips, and the blocks in clip order,
    # so that a batch is still one block (all are clips_per_task clips but the tiling's last).
    gpu = s.gpus_per_actor > 0
    scored = clips.map_batches(
        MCScorer,
        fn_constructor_kwargs={"checkpoint": str(checkpoint), "trials": s.trials, "tau": s.tau,
                               "out_dir": str(out_dir), "batch_size": cfg.clips.batch_size,
                               "block_clips": cfg.clips.clips_per_task, "use_gpu": gpu},
        batch_size=cfg.clips.clips_per_task if gpu else None,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=s.actors),
        num_cpus=s.cpus_per_actor,
        num_gpus=s.gpus_per_actor or None,
    )
    if gpu and not cfg.ray.in_process:
        scored.context.execution_options.preserve_order = True
    return scored


# ---- the scoring step --------------------------------------------------------------------------------


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()


def scoring_signature(cfg: Config, checkpoint: Path, videos: dict[str, np.ndarray]) -> dict:
    """What the scores of a tiling depend on: a partial folder scored with anything else is discarded."""
    with open(checkpoint, "rb") as f:
        model = hashlib.file_digest(f, "sha256").hexdigest()
    ids = "\n".join(f"{v}\t{n}" for v, n in zip(videos["video_id"], videos["num_frames"])).encode()
    c = cfg.clips
    return {"checkpoint_sha256": model, "trials": cfg.score.trials, "tau": cfg.score.tau,
            "clip": [c.length, c.stride, c.height, c.width], "batch_size": c.batch_size,
            "clips_per_task": c.clips_per_task, "videos_sha256": _digest(ids),
            "labelled_sha256": _digest(np.ascontiguousarray(videos["labelled_keys"], np.int64).tobytes()),
            "clips": int(videos["first_clip"][-1])}


def open_partial(folder: Path, signature: dict) -> list[tuple[int, int]]:
    """The committed ranges of a partial scoring folder scored with `signature`, after removing what a
    kill left half-written; a folder of another signature (or none) is emptied and signed."""
    saved = folder / SIGNATURE_FILE
    if folder.is_dir() and saved.is_file() and json.loads(saved.read_text()) == signature:
        for leftover in folder.glob(".*.tmp"):
            leftover.unlink()
        return committed_ranges(folder)
    if folder.exists():
        log.info("%s was scored with another model, settings or labels: starting afresh", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    tmp = folder / f".{SIGNATURE_FILE}.tmp"
    tmp.write_text(json.dumps(signature, indent=1) + "\n")
    tmp.replace(saved)
    return []


MID_RUN = (0.1, 0.6)  # the shares of a step's clips between which its mid-run rate is timed


def _consume(records, total_clips: int) -> dict:
    """Drain the pool's shard records; what was scored, and how fast: from the first shard on, and
    mid-run (between the shards that bring the step to 10% and to 60% of its clips), where neither
    the actors' start-up nor the last blocks, scored with every CPU once decoding has ended, count."""
    start = time.perf_counter()
    first = None
    clips = frames = after_first = shards = 0
    peak = anon = 0.0
    mid = [None, None]  # (time, frames) when 10% and when 60% of the clips were in
    for rec in records:
        now = time.perf_counter()
        n_frames = int(rec["frames"].sum())
        if first is None:
            first = now
        else:
            after_first += n_frames
        clips += int((rec["clip_stop"] - rec["clip_start"]).sum())
        frames += n_frames
        shards += len(rec["frames"])
        for k, share in enumerate(MID_RUN):
            if mid[k] is None and clips >= share * total_clips:
                mid[k] = (now, frames)
        peak = max(peak, float(rec["peak_rss_mb"].max(initial=0.0)))
        anon = max(anon, float(np.nanmax(rec["anon_rss_mb"], initial=0.0)))
        log.debug("scored clips %d of %d", clips, total_clips)
    end = time.perf_counter()
    steady = after_first / (end - first) if first is not None and end > first else None
    mid_rate = None
    if mid[1] is not None and mid[1][0] > mid[0][0]:
        mid_rate = (mid[1][1] - mid[0][1]) / (mid[1][0] - mid[0][0])
    return {"clips_scored": clips, "frames_scored": frames, "shards_written": shards,
            "seconds": end - start, "first_shard_s": None if first is None else first - start,
            "frames_per_s": steady, "mid_frames_per_s": mid_rate,
            "actor_peak_rss_mb": peak, "actor_anon_rss_mb": anon}


def score_cycle(cfg: Config, data, store, cycle: int) -> Path:
    """Score every unlabelled training frame with cycle K's detector into scores/cycle=K/ (shards),
    resuming a step that was cut short (module doc). Returns the table's folder.

    Args:
        data, store: the run (`rundir.RunData`) and its label store (`loop.open_run`).
    """
    from raylab.data.stream import init_ray, tile_dataset, tiling_videos
    from raylab.train import MODEL_FILE

    checkpoint = data.paths.checkpoint_dir(cycle) / MODEL_FILE
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint} not found: cycle {cycle} of {data.paths.path} is not trained")
    c = cfg.clips
    labelled = {v: f[f >= 0] for v, f in store.labelled_frames().items()}
    videos = tiling_videos(data.train, data.root, labelled, c.length, c.stride)
    total = int(videos["first_clip"][-1])
    out = data.paths.scores(cycle)
    partial = out.with_name(f".{out.name}.partial")
    covered = open_partial(partial, scoring_signature(cfg, checkpoint, videos))
    todo = missing_ranges(total, c.clips_per_task, covered)
    resumed = total - sum(b - a for a, b in todo)
    if resumed:
        log.info("cycle %d: %d of %d clips already scored; scoring the other %d", cycle, resumed, total,
                 total - resumed)
    summary = {"clips": total, "clips_resumed": resumed, **_consume([], total)}
    if todo:
        init_ray(cfg.ray.address, cfg.ray.num_cpus, cfg.ray.in_process)
        clips = tile_dataset(videos, todo, (c.height, c.width), cfg.ray.decode_num_cpus, cfg.ray.in_process)
        summary.update(_consume(score_dataset(clips, checkpoint, cfg, partial).iter_batches(batch_size=None),
                                total))
    left = missing_ranges(total, c.clips_per_task, committed_ranges(partial))
    if left:  # the pool returned without error, so this is a bug, not a fault: say where
        raise RuntimeError(f"scoring of cycle {cycle} left clips {left[:3]}... without a shard in {partial}")
    summary["shards"] = len(committed_ranges(partial))
    (partial / SUMMARY_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return out


def read_score_columns(folder: Path, columns=("video_id", "frame", "uncertainty")) -> pa.Table:
    """The score table of scores/cycle=K (or any folder or file of shards) in `columns` only, as a
    pyarrow Table: video_id dictionary-encoded, scores float32. What selection reads: no pandas frame,
    no Python string per row."""
    import pyarrow.dataset as ds

    # video ids straight from each shard's dictionary pages: never a string per row
    parquet = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns={"video_id"}))
    table = ds.dataset(str(folder), format=parquet).to_table(columns=list(columns))
    for name in ("uncertainty", "entropy", "fg_fraction"):
        if name in table.column_names:
            i = table.column_names.index(name)
            table = table.set_column(i, name, table.column(name).cast(pa.float32()))
    return table
