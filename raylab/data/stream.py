"""Clip streaming on Ray Data: the only Ray Data code of raylab.

The clip index (which frames each clip holds, `clips.py`) is metadata and is built on the driver;
`clip_dataset` turns it into a Ray Data dataset whose `map_batches` tasks decode only each clip's
frames (decord, a short-lived reader per clip) and render the clip's targets from the sparse labels.
Nothing materialises the whole set: batches stream to the consumer (a training loop via
`iter_torch_batches` / a Ray Train dataset shard, or the scoring actor pool).
Batches from `iter_batches(batch_size=B)` hold B clips; each key below is one array over them.

A decoded batch is a dict of numpy arrays:
    video_id   object [B]            the clip's video
    frames     int32 [B, T]          0-based frame indices
    owned      bool [B, T]           the clip is the one that scores this frame (dense tiling)
    clip       uint8 [B, T, H, W, 3] RGB frames at the configured size
    label      int32 [B]             class index of the video's action (-1: several / unknown)
    fg         uint8 [B, T, H, W]    foreground target: labels on annotated frames, pseudo-labels elsewhere
    annotated  bool [B, T]           frame is labelled in the label store
    weight     float32 [B, T]        MGW (or masking / interpolation) loss weight of the frame
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from raylab.data.targets import FrameLabel, clip_targets, frame_label, labels_near
from raylab.data.video import read_frames

_PAYLOAD_TYPES = {
    "ann_frames": pa.list_(pa.int32()),
    "ann_boxes": pa.list_(pa.list_(pa.float32())),  # per annotated frame: K boxes flattened to 4K floats
    "ann_masks": pa.list_(pa.list_(pa.list_(pa.int32()))),  # per annotated frame: K RLE counts, or []
    "ann_tracks": pa.list_(pa.list_(pa.int32())),  # per annotated frame: K track identities, or []
}


def clip_table(
    clips: pd.DataFrame,
    index: pd.DataFrame,
    video_root: str | Path,
    labels: Mapping[str, Mapping[int, FrameLabel]] | None = None,
) -> pa.Table:
    """Join clip rows with what decoding needs: absolute path, size, class, and nearby labels.

    Each clip carries only the annotated frames its targets depend on (`labels_near`), so decode
    tasks are stateless and need no shared label table.
    """
    meta = index.set_index("video_id")
    missing = sorted(set(clips["video_id"]) - set(meta.index))
    if missing:
        raise KeyError(f"clips name videos not in the index: {missing[:5]}")
    m = meta.loc[clips["video_id"]]
    root = Path(video_root).resolve()
    cols = {
        "video_id": clips["video_id"].tolist(),
        "path": [str(root / p) for p in m["path"]],
        "height": m["height"].to_numpy(np.int32),
        "width": m["width"].to_numpy(np.int32),
        "label": m["label"].to_numpy(np.int32),
        "frames": [np.asarray(f, np.int32) for f in clips["frames"]],
        "owned": [np.asarray(o, bool) for o in clips["owned"]],
    }
    labels = labels or {}
    payload = [_clip_payload(labels.get(v, {}), f) for v, f in zip(clips["video_id"], clips["frames"])]
    for j, key in enumerate(_PAYLOAD_TYPES):
        cols[key] = pa.array([p[j] for p in payload], type=_PAYLOAD_TYPES[key])
    return pa.table(cols)


def _clip_payload(video_labels: Mapping[int, FrameLabel], frames) -> tuple[list, list, list, list]:
    annotated = np.array(sorted(video_labels), dtype=np.int64)
    near = labels_near(annotated, frames) if annotated.size else annotated
    boxes = [video_labels[int(a)].boxes.ravel().tolist() for a in near]
    masks = [[c.tolist() for c in video_labels[int(a)].masks] for a in near]
    tracks = [list(video_labels[int(a)].tracks) for a in near]
    return near.tolist(), boxes, masks, tracks


def decode_clips(
    batch: pa.Table, size: tuple[int, int], sigma: float, weighting: str = "mgw",
    changed_gaps: str = "skip",
    pseudo_masks: str = "copied",
) -> dict[str, np.ndarray]:
    """Decode a batch of clip rows (from `clip_table`) into frames and targets (see module doc)."""
    rows = batch.to_pylist()
    out: dict[str, list] = {k: [] for k in ("video_id", "frames", "owned", "clip", "label",
                                            "fg", "annotated", "weight")}
    for row in rows:
        frames = np.asarray(row["frames"], dtype=np.int64)
        labels = {
            f: frame_label(np.reshape(b, (-1, 4)), m, t)
            for f, b, m, t in zip(row["ann_frames"], row["ann_boxes"], row["ann_masks"], row["ann_tracks"])
        }
        targets = clip_targets(labels, frames, (row["height"], row["width"]), size, sigma, weighting,
                               changed_gaps, pseudo_masks)
        out["clip"].append(read_frames(row["path"], frames, size))
        out["video_id"].append(row["video_id"])
        out["frames"].append(frames.astype(np.int32))
        out["owned"].append(np.asarray(row["owned"], dtype=bool))
        out["label"].append(row["label"])
        for key in ("fg", "annotated", "weight"):
            out[key].append(targets[key])
    result = {k: np.stack(v) for k, v in out.items() if k not in ("video_id", "label")}
    result["video_id"] = np.array(out["video_id"], dtype=object)
    result["label"] = np.array(out["label"], dtype=np.int32)
    return result


def clip_dataset(
    table: pa.Table,
    size: tuple[int, int],
    sigma: float,
    weighting: str = "mgw",
    changed_gaps: str = "skip",
    pseudo_masks: str = "copied",
    clips_per_task: int = 64,
    num_cpus: float = 1.0,
    in_process: bool = False,
):
    """A Ray Data dataset of decoded clips; consume it with `iter_batches(batch_size=...)`.

    The clip table is cut into blocks of `clips_per_task` rows; each decode task decodes one block.
    Larger blocks amortise the per-task cost (on 2 CPUs, 64 clips per task reach 1.6x the clips/s of
    16; docs/BENCHMARKS.md), smaller ones start streaming sooner and hold less memory per task.
    With `in_process` the same stream is decoded in this process (`raylab.data.local.LocalDataset`).
    """
    blocks = [table.slice(i, clips_per_task) for i in range(0, table.num_rows, clips_per_task)] or [table]
    return dataset_from_blocks(blocks, in_process).map_batches(
        decode_clips,
        batch_size=None,  # one block per call
        batch_format="pyarrow",
        fn_kwargs={"size": tuple(size), "sigma": sigma, "weighting": weighting,
                   "changed_gaps": changed_gaps, "pseudo_masks": pseudo_masks},
        num_cpus=num_cpus,
    )


# ---- the dense tiling for scoring -------------------------------------------------------------------
#
# A pool of a million frames is 125k clips: their frame lists, paths and label payloads would be a
# pool-sized table in the driver and in the object store. The scoring stream instead hands the tasks
# clip *ranges* of the dense tiling (`clips.clip_offsets`); each task makes its clips from the
# per-video rows (`tiling_videos`, shipped once with the operator) and decodes them. A scoring batch:
#     video_id    object [B]             the clip's video
#     clip_index  int64 [B]              the clip's position in the dense tiling of all videos
#     frames      int32 [B, T]           0-based frame indices
#     owned       bool [B, T]            the clip is the one that scores this frame
#     annotated   bool [B, T]            frame is labelled (never a candidate)
#     clip        uint8 [B, T, H, W, 3]  RGB frames at the configured size


def tiling_videos(videos: pd.DataFrame, video_root: str | Path, labelled: Mapping[str, np.ndarray],
                  length: int, stride: int) -> dict[str, np.ndarray]:
    """What a task needs to make and decode any clip of the dense tiling of `videos` (video_id, path,
    num_frames; dataset-index order): per video its id, absolute path and first clip (`clip_offsets`,
    [V + 1]); and the labelled frames as sorted keys video position * key_stride + frame."""
    from raylab.data.clips import clip_offsets

    root = Path(video_root).resolve()
    ids = videos["video_id"].to_numpy(dtype=object)
    num_frames = videos["num_frames"].to_numpy(np.int64)
    key_stride = int(num_frames.max(initial=0)) + 1
    position = pd.Index(ids)
    keys = [position.get_loc(v) * key_stride + np.asarray(f, np.int64) for v, f in labelled.items()
            if v in position]
    return {"video_id": ids, "path": np.array([str(root / p) for p in videos["path"]], dtype=object),
            "num_frames": num_frames, "first_clip": clip_offsets(num_frames, length, stride),
            "labelled_keys": np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64),
            "key_stride": np.int64(key_stride), "length": np.int64(length), "stride": np.int64(stride)}


def decode_tiles(pieces: pa.Table, ranges: np.ndarray, videos: dict[str, np.ndarray],
                 size: tuple[int, int]) -> dict:
    """Make and decode the clips of the tiling ranges `ranges[i]` (clip_start, clip_stop) for each row i
    of `pieces` (column "id"); see the block comment above. Each video's frames are read once per
    range (decord, one reader), then cut into its clips."""
    from raylab.data.clips import tile_video

    length, stride, key_stride = int(videos["length"]), int(videos["stride"]), int(videos["key_stride"])
    first, labelled = videos["first_clip"], videos["labelled_keys"]
    out: dict[str, list] = {k: [] for k in ("video_id", "clip_index", "frames", "owned", "annotated", "clip")}
    for piece in pieces.column("id").to_pylist():
        g = np.arange(*ranges[piece], dtype=np.int64)
        video = np.searchsorted(first, g, side="right") - 1  # [B] position of each clip's video
        for v in np.unique(video).tolist():
            tiles = tile_video(int(videos["num_frames"][v]), length, stride)
            picked = [tiles[j] for j in (g[video == v] - first[v]).tolist()]
            frames = np.stack([f for f, _ in picked])  # [b, T]
            unique, inverse = np.unique(frames, return_inverse=True)
            pixels = read_frames(videos["path"][v], unique, size)[inverse.reshape(-1)]  # [b * T, H, W, 3]
            keys = v * key_stride + frames
            pos = np.minimum(np.searchsorted(labelled, keys), max(labelled.size - 1, 0))
            out["clip"].append(pixels.reshape(*frames.shape, *pixels.shape[1:]))
            out["frames"].append(frames.astype(np.int32))
            out["owned"].append(np.stack([o for _, o in picked]))
            out["annotated"].append(labelled[pos] == keys if labelled.size else np.zeros(frames.shape, bool))
            out["video_id"].append(np.full(len(picked), videos["video_id"][v], dtype=object))
        out["clip_index"].append(g)
    return {k: np.concatenate(v) for k, v in out.items()}


def tile_dataset(videos: dict[str, np.ndarray], ranges: list[tuple[int, int]], size: tuple[int, int],
                 num_cpus: float = 1.0, in_process: bool = False):
    """A dataset of the clips of the dense tiling in `ranges` ((clip_start, clip_stop) pairs of
    `tiling_videos(...)["first_clip"]` positions), one range per task, decoded in the tasks.

    The source is `ray.data.range` (one row, a range's number, per block): read tasks make the blocks,
    so the driver puts nothing per range in the object store. A dataset built from one table per range
    holds that table's block and metadata on the driver for the whole run: about 60 KB per block
    (measured), 24 MB more at 800k frames than at 100k.
    """
    kwargs = {"ranges": np.asarray(ranges, dtype=np.int64).reshape(-1, 2), "videos": videos,
              "size": tuple(size)}
    if in_process:
        source = dataset_from_blocks([pa.table({"id": [i]}) for i in range(len(ranges))], in_process=True)
    else:
        import ray.data
        from ray.data._internal.datasource.range_datasource import RangeDatasource

        ray.data.DataContext.get_current().op_resource_reservation_enabled = False  # see dataset_from_blocks
        # `ray.data.range` with the decode tasks' CPUs: its read tasks (1 CPU by default) would neither fuse
        # with the decode step nor find a whole CPU free beside the scoring actors, and scoring would stall
        numbers = RangeDatasource(len(ranges), block_format="arrow", column_name="id")
        source = ray.data.read_datasource(numbers, num_cpus=num_cpus, override_num_blocks=len(ranges))
    return source.map_batches(decode_tiles, batch_size=None, batch_format="pyarrow", fn_kwargs=kwargs,
                              num_cpus=num_cpus)


def dataset_from_blocks(blocks: list, in_process: bool = False):
    """A dataset of `blocks` (pyarrow Tables or pandas DataFrames, one per task): a Ray Dataset, or a
    `LocalDataset` run in this process when `in_process` (`ray.in_process`: sweep trials)."""
    if in_process:
        from raylab.data.local import LocalDataset

        return LocalDataset(blocks)
    import ray.data

    # A one-operator pipeline gains nothing from Ray Data's per-operator reservation, which on a small
    # node keeps half of the CPUs out of the decode operator's budget (measured on 2 CPUs: 139 clips/s
    # with it, 245 without).
    ray.data.DataContext.get_current().op_resource_reservation_enabled = False
    if blocks and isinstance(blocks[0], pd.DataFrame):
        return ray.data.from_pandas(blocks)
    return ray.data.from_arrow(blocks)


def init_ray(address: str = "", num_cpus: int = 0, in_process: bool = False) -> None:
    """Start a local Ray (`address` "") with `num_cpus` CPUs (0 = all), or join a cluster ("auto", URI).

    Does nothing when Ray is already initialised (tests, Ray jobs), or with `in_process` (the run's
    steps then need no Ray: `ray.in_process`).
    """
    import warnings

    import ray

    # Ray Train's own DataConfig sets ExecutionOptions.exclude_resources, which Ray Data deprecated, so
    # every training run warned though raylab never sets it (ray-project/ray#64632, review of
    # execution_options.py: "Internal Train assignments trigger deprecation").
    warnings.filterwarnings("ignore", message=r".*exclude_resources.* is deprecated")
    if in_process or ray.is_initialized():
        return
    if address:
        ray.init(address=address)
    else:
        # "local": always a new Ray of our own, never one that another process started on this machine.
        # Without the dashboard, which serves the State API, Ray Train v2's PlacementGroupCleaner warns
        # "Failed to query Ray Train Controller actor state" every poll of every training run (Ray's
        # doing: it treats the missing API as transient, ray-project/ray#65447); the lines go to
        # RUN/logs/ray.log (raylab.quiet), and a dashboard is not worth its process for them.
        ray.init(address="local", num_cpus=num_cpus or None, include_dashboard=False)


def quiet_per_epoch(ds):
    """`ds` without a Ray Data progress bar: a training dataset is read once per epoch inside Ray Train,
    whose per-epoch reports are the progress; a bar per epoch would flood the console."""
    ds.context.enable_progress_bars = False
    ds.context.print_on_execution_start = False
    return ds


def cluster_gpus() -> float:
    """GPUs of the Ray cluster this process is connected to (0 without GPUs)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0))


# ---- feature sequences (temporal pipeline) -------------------------------------------------------------
#
# One .npy per video of shape [T, D] (T snippets of D features, e.g. the released I3D features of
# THUMOS'14). Windows of snippets are tiled exactly like clips of frames (`clips.tile_clips` with
# num_frames = T), and decoding reads only a window's rows from a memory-mapped file.


def feature_index(folder: str | Path) -> pd.DataFrame:
    """video_id, path, num_frames (= snippets T), dim (D) of every <video_id>.npy below `folder`.

    Raises:
        ValueError: a file that is not a 2-D array, naming it.
    """
    rows = []
    for path in sorted(Path(folder).rglob("*.npy")):
        array = np.load(path, mmap_mode="r")  # reads the header only
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError(f"{path}: expected features of shape [T, D] with T > 0, got {array.shape}")
        video_id = path.relative_to(folder).with_suffix("").as_posix()
        rows.append((video_id, str(path.resolve()), int(array.shape[0]), int(array.shape[1])))
    return pd.DataFrame(rows, columns=["video_id", "path", "num_frames", "dim"])


def decode_features(batch: pa.Table) -> dict[str, np.ndarray]:
    """Read the snippets of each window (rows from `feature_index` joined with a tiling).

    Returns:
        video_id object [B]; frames int32 [B, W] snippet indices; owned bool [B, W];
        features float32 [B, W, D].
    """
    rows = batch.to_pylist()
    features = [np.asarray(np.load(r["path"], mmap_mode="r")[np.asarray(r["frames"])], dtype=np.float32)
                for r in rows]
    return {"video_id": np.array([r["video_id"] for r in rows], dtype=object),
            "frames": np.array([r["frames"] for r in rows], dtype=np.int32),
            "owned": np.array([r["owned"] for r in rows], dtype=bool),
            "features": np.stack(features)}


def feature_dataset(windows: pd.DataFrame, index: pd.DataFrame, windows_per_task: int = 64,
                    num_cpus: float = 1.0, in_process: bool = False):
    """A Ray Data dataset of feature windows (`clips.tile_clips(index, window, stride)`), streamed."""
    paths = index.set_index("video_id")["path"]
    table = pa.table({"video_id": windows["video_id"].tolist(),
                      "path": paths.loc[windows["video_id"]].tolist(),
                      "frames": [np.asarray(f, np.int32) for f in windows["frames"]],
                      "owned": [np.asarray(o, bool) for o in windows["owned"]]})
    blocks = [table.slice(i, windows_per_task) for i in range(0, table.num_rows, windows_per_task)] or [table]
    return dataset_from_blocks(blocks, in_process).map_batches(decode_features, batch_size=None,
                                                               batch_format="pyarrow", num_cpus=num_cpus)
