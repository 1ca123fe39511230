"""Snippet feature sequences for AL-STAL: extraction on Ray Data, and a reader for both layouts.

A video of N frames becomes T = ceil(N / s) snippets (s = `features.snippet_stride`). Snippet i is
the `features.snippet_frames` (L) frames i*s, i*s + 1, ..., i*s + L - 1, where indices past the last
frame repeat the last frame (`snippet_frame_indices`); the frozen encoder turns each snippet into D
numbers. A video's features are one float32 array [T, D].

Time axis (the localizer's, raylab/models/localizer.py): snippet i spans [i, i + 1) in snippet units,
i.e. frames [i*s, (i + 1)*s), i.e. seconds [i*s / fps, (i + 1)*s / fps). Hence

    x [snippets] = t [seconds] * fps / s        (`seconds_to_snippets`)
    t [seconds]  = x [snippets] * s / fps       (`snippets_to_seconds`)

and the last snippet's span may end up to s - 1 frames after the video. A snippet *sees* L frames
from the start of its span, so with L > s its content is centred (L - s) / 2 frames after the
centre of its span (2 frames for L = 8, s = 4); training targets and predictions use the same
convention, so the localizer absorbs the shift.

Determinism: a video's snippets are always encoded in the same batches (`SNIPPETS_PER_BATCH` from
its first snippet), so extracting again, with any number of actors, gives the same bits on the same
machine and torch build. (A snippet encoded in another batch may differ in the last float bits.)

Layout on disk (`extract_features`): `<out>/<video_id>.npy` float32 [T, D] (a video_id with "/"
makes subfolders) and `<out>/features.json`:

    {"encoder": "default" | "torchscript", "encoder_id": str, "encoder_weights": str, "dim": D,
     "snippet_frames": L, "snippet_stride": s, "height": H, "width": W,
     "videos": {video_id: {"fps": float, "num_frames": int, "snippets": T}},
     "failed": {video_id: {"path": str, "reason": str}}}

`load_features` also reads folders of precomputed features without features.json (one .npy [T, D]
per video, e.g. released I3D features of THUMOS'14); stride and fps then come from the config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch

from raylab.config import FeatureConfig
from raylab.data.video import VideoError, read_frames
from raylab.models.snippet_encoder import DEFAULT_ENCODER_ID, encoder_dim, load_encoder

log = logging.getLogger(__name__)

FEATURES_FILE = "features.json"
SNIPPETS_PER_BATCH = 32  # snippets per encoder call: [32, 3, L, H, W] float32 is 12 MiB at L=8, 64x64
SNIPPETS_PER_READ = 128  # snippets decoded per `read_frames` call (one reader, one seek)
FEATURE_COLUMNS = ("video_id", "path", "snippets", "dim", "fps", "snippet_stride")
_SETTINGS = ("encoder", "encoder_id", "dim", "snippet_frames", "snippet_stride", "height", "width")


# ---- time axis -------------------------------------------------------------------------------------


def num_snippets(num_frames, stride: int):
    """T = ceil(num_frames / stride): the snippets of a video (scalar or array of frame counts)."""
    return -(-np.asarray(num_frames, dtype=np.int64) // int(stride))


def snippet_frame_indices(first: int, count: int, num_frames: int, cfg: FeatureConfig) -> np.ndarray:
    """Frame indices of snippets first .. first + count - 1; int64 [count, L], past the end -> last frame."""
    starts = (first + np.arange(count, dtype=np.int64)) * cfg.snippet_stride  # [count]
    return np.minimum(starts[:, None] + np.arange(cfg.snippet_frames), num_frames - 1)


def _check_rate(fps, stride) -> tuple[np.ndarray, np.ndarray]:
    fps, stride = np.asarray(fps, dtype=np.float64), np.asarray(stride, dtype=np.float64)
    if np.any(~(fps > 0)) or np.any(~(stride > 0)):
        raise ValueError(f"fps and snippet stride must be > 0, got fps={fps}, stride={stride}")
    return fps, stride


def seconds_to_snippets(t, fps, stride):
    """Seconds -> snippet units (x = t * fps / stride); numpy-broadcast over all three arguments."""
    fps, stride = _check_rate(fps, stride)
    return np.asarray(t, dtype=np.float64) * fps / stride


def snippets_to_seconds(x, fps, stride):
    """Snippet units -> seconds (t = x * stride / fps); snippet i spans [i, i + 1), see the module doc."""
    fps, stride = _check_rate(fps, stride)
    return np.asarray(x, dtype=np.float64) * stride / fps


# ---- one video -------------------------------------------------------------------------------------


def encode_video(path: str | Path, num_frames: int, encoder, cfg: FeatureConfig, device="cpu") -> np.ndarray:
    """Features of every snippet of one video, decoding only the frames the snippets use.

    Returns:
        float32 [ceil(num_frames / stride), D].

    Raises:
        VideoError: the video cannot be decoded (missing, corrupt, fewer frames than `num_frames`),
            or the encoder returned NaN or inf for it.
    """
    if num_frames < 1:
        raise VideoError(path, f"no frames (num_frames={num_frames})")
    total, out = int(num_snippets(num_frames, cfg.snippet_stride)), []
    for first in range(0, total, SNIPPETS_PER_READ):
        idx = snippet_frame_indices(first, min(SNIPPETS_PER_READ, total - first), num_frames, cfg)
        wanted = np.unique(idx)  # sorted: one forward pass of the decoder
        frames = read_frames(path, wanted, (cfg.height, cfg.width))  # uint8 [U, H, W, 3]
        for b in range(0, len(idx), SNIPPETS_PER_BATCH):
            clips = frames[np.searchsorted(wanted, idx[b : b + SNIPPETS_PER_BATCH])]  # uint8 [B, L, H, W, 3]
            x = torch.from_numpy(clips).to(device).permute(0, 4, 1, 2, 3).float() / 255.0  # [B, 3, L, H, W]
            with torch.no_grad():
                out.append(encoder(x).float().cpu().numpy())  # [B, D]
    features = np.concatenate(out).astype(np.float32, copy=False)  # [T, D]
    bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
    if bad.size:
        raise VideoError(path, f"the encoder returned NaN or inf for {bad.size} snippets, first {bad[0]}")
    return features


def feature_file(folder: str | Path, video_id: str) -> Path:
    """`<folder>/<video_id>.npy`; a video_id that is absolute or holds ".." is refused."""
    rel = PurePosixPath(video_id)
    if not video_id or rel.is_absolute() or ".." in rel.parts or "\\" in video_id:
        raise ValueError(f"video_id {video_id!r} cannot name a file inside {folder} (absolute, '..' or '\\')")
    return Path(folder) / f"{video_id}.npy"


def _save_atomic(path: Path, write) -> None:
    """Write through `write(file)` to a temporary name beside `path`, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _npy_shape(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from the .npy header, without reading the data.

    Raises:
        ValueError: not a readable .npy file (names it).
    """
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as e:
        raise ValueError(f"{path}: not a readable .npy array: {e}") from e
    return array.shape, array.dtype


class SnippetExtractor:
    """`map_batches` callable: one frozen encoder per actor (loaded once); writes one .npy per video.

    Returns one row per video: video_id, snippets (T, 0 when it failed), reason ("" when written).
    """

    def __init__(self, cfg: FeatureConfig, out: str, threads: int = 1, use_gpu: bool = False):
        if threads:  # 0: leave torch's threads as they are (in process: they are the caller's)
            torch.set_num_threads(threads)
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")
        self.encoder = load_encoder(cfg).to(self.device)
        self.cfg, self.out = cfg, Path(out)

    def __call__(self, batch: dict) -> dict:
        rows = [self.extract(vid, path, int(n))
                for vid, path, n in zip(batch["video_id"], batch["path"], batch["num_frames"])]
        ids, snippets, reasons = zip(*rows)
        return {"video_id": np.array(ids, dtype=object), "snippets": np.array(snippets, dtype=np.int64),
                "reason": np.array(reasons, dtype=object)}

    def extract(self, video_id: str, path: str, num_frames: int) -> tuple[str, int, str]:
        try:
            features = encode_video(path, num_frames, self.encoder, self.cfg, self.device)  # [T, D]
        except VideoError as e:
            log.warning("features: skipping %s: %s", video_id, e)
            return video_id, 0, e.reason
        _save_atomic(feature_file(self.out, video_id), lambda f: np.save(f, features))
        return video_id, len(features), ""


# ---- extraction ------------------------------------------------------------------------------------


def _video_table(root: Path, index: pd.DataFrame, stride: int) -> pd.DataFrame:
    missing = {"video_id", "path", "num_frames", "fps"} - set(index.columns)
    if missing:
        raise ValueError(f"the index needs columns {sorted(missing)} (a dataset index.parquet)")
    dup = index["video_id"][index["video_id"].duplicated()].tolist()
    if dup:
        raise ValueError(f"the index lists videos twice: {dup[:5]}")
    videos = index[["video_id", "path", "num_frames", "fps"]].copy()
    videos["path"] = [str(p if Path(p).is_absolute() else Path(root) / p) for p in videos["path"]]
    videos["num_frames"] = videos["num_frames"].astype(np.int64)
    videos["fps"] = videos["fps"].astype(np.float64)
    videos["snippets"] = num_snippets(videos["num_frames"].to_numpy(), stride)
    for vid in videos["video_id"]:
        feature_file(".", vid)  # refuses ids that would write outside the folder
    return videos.reset_index(drop=True)


def _settings(cfg: FeatureConfig, dim: int) -> dict:
    if not cfg.encoder_weights:  # the seeded default net
        encoder_id, weights = DEFAULT_ENCODER_ID, ""
    else:  # a TorchScript module, or a state_dict of the default architecture: named by its content
        weights = str(Path(cfg.encoder_weights).resolve())
        encoder_id = "sha256:" + hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    return {"encoder": cfg.encoder, "encoder_id": encoder_id, "encoder_weights": weights, "dim": dim,
            "snippet_frames": cfg.snippet_frames, "snippet_stride": cfg.snippet_stride,
            "height": cfg.height, "width": cfg.width}


def _open_output(out: Path, settings: dict) -> dict:
    """The folder's manifest (features.json), checked against `settings`; a fresh one if there is none.

    Raises:
        ValueError: the folder was written with other settings, or holds .npy files it did not write.
    """
    manifest_path = out / FEATURES_FILE
    if not manifest_path.is_file():
        strays = next(out.rglob("*.npy"), None) if out.is_dir() else None
        if strays is not None:
            raise ValueError(f"{out} holds .npy files (e.g. {strays}) but no {FEATURES_FILE}: they were not "
                             "written by extract_features (precomputed features?). Read them with "
                             "load_features, or extract into an empty folder.")
        return {**settings, "videos": {}, "failed": {}}
    manifest = json.loads(manifest_path.read_text())
    differ = [k for k in _SETTINGS if manifest.get(k) != settings[k]]
    if differ:
        was = ", ".join(f"{k}={manifest.get(k)!r} (now {settings[k]!r})" for k in differ)
        raise ValueError(f"{manifest_path}: features there were extracted with other settings: {was}. "
                         "Extract into another folder, or delete this one.")
    return {**manifest, **settings}


def _write_manifest(out: Path, manifest: dict) -> None:
    text = json.dumps(manifest, indent=1, sort_keys=False).encode()
    _save_atomic(out / FEATURES_FILE, lambda f: f.write(text))


def _is_done(out: Path, video_id: str, snippets: int, dim: int) -> bool:
    path = feature_file(out, video_id)
    if not path.is_file():
        return False
    shape, dtype = _npy_shape(path)
    if shape == (snippets, dim) and dtype == np.float32:
        return True
    log.warning("features: %s has shape %s %s, expected (%d, %d) float32: extracting it again",
                path, shape, dtype, snippets, dim)
    return False


def extract_features(root: Path, index: pd.DataFrame, out: Path, cfg: FeatureConfig, actors: int = 1,
                     cpus_per_actor: float = 1.0, gpus_per_actor: float = 0.0,
                     in_process: bool = False) -> Path:
    """Encode every video of `index` into `<out>/<video_id>.npy` float32 [T, D]; write features.json.

    Runs a Ray Data actor pool (`actors` actors, one encoder each) over the videos that have no
    features yet: a rerun after an interruption encodes only what is missing. A video that cannot be
    decoded is logged with its reason and listed under "failed" in features.json; the rest go on.
    The caller starts Ray (`raylab.data.stream.init_ray`); nothing needs Ray when all are done, or
    with `in_process` (one encoder in this process, `ray.in_process`).

    Args:
        root: dataset root; relative index paths are taken relative to it.
        index: video_id, path, num_frames, fps (a dataset index, e.g. from `load_dataset`).
        out: output folder (created); reused only with the settings it was written with.
        cfg: the `features` config section.

    Returns:
        `out`.

    Raises:
        ValueError: a bad index, an encoder that does not give [B, D], or a folder written with
            other settings or holding .npy files that extract_features did not write.
        FileNotFoundError: the TorchScript encoder file is missing.
    """
    if actors < 1 or cpus_per_actor <= 0 or gpus_per_actor < 0:
        raise ValueError(f"need actors >= 1, cpus_per_actor > 0 and gpus_per_actor >= 0, got {actors}, "
                         f"{cpus_per_actor}, {gpus_per_actor}")
    out = Path(out)
    videos = _video_table(Path(root), index, cfg.snippet_stride)
    settings = _settings(cfg, encoder_dim(load_encoder(cfg), cfg))  # fails here, not in an actor
    manifest = _open_output(out, settings)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.rglob(".*.npy.*.part"):  # left by a killed run
        stale.unlink()
    done = np.array([_is_done(out, v, t, settings["dim"])
                     for v, t in zip(videos["video_id"], videos["snippets"])], dtype=bool)
    _write_manifest(out, manifest)  # marks the folder as ours before the first .npy lands
    todo = videos[~done]
    log.info("features: %d of %d videos to extract into %s (%d already there)", len(todo), len(videos), out,
             int(done.sum()))
    results = (_run_pool(todo, out, cfg, actors, cpus_per_actor, gpus_per_actor, in_process)
               if len(todo) else [])
    failed = {r["video_id"]: r["reason"] for r in results if r["reason"]}
    _write_manifest(out, _record(manifest, videos, failed))
    if failed:
        log.warning("features: %d of %d videos could not be read; listed under 'failed' in %s",
                    len(failed), len(videos), out / FEATURES_FILE)
    return out


def _record(manifest: dict, videos: pd.DataFrame, failed: dict[str, str]) -> dict:
    """Enter every video of this run in the manifest: under "videos", or under "failed" with its reason."""
    for row in videos.itertuples():
        manifest["failed"].pop(row.video_id, None)
        manifest["videos"].pop(row.video_id, None)
        if row.video_id in failed:
            manifest["failed"][row.video_id] = {"path": row.path, "reason": failed[row.video_id]}
        else:
            manifest["videos"][row.video_id] = {"fps": float(row.fps), "num_frames": int(row.num_frames),
                                                "snippets": int(row.snippets)}
    return manifest


def _run_pool(todo: pd.DataFrame, out: Path, cfg: FeatureConfig, actors: int, cpus_per_actor: float,
              gpus_per_actor: float, in_process: bool = False) -> list[dict]:
    import ray.data

    from raylab.data.stream import dataset_from_blocks

    videos = todo[["video_id", "path", "num_frames"]].reset_index(drop=True)
    # one video per block: spread over the actors
    ds = dataset_from_blocks([videos.iloc[i : i + 1] for i in range(len(videos))], in_process)
    ds = ds.map_batches(
        SnippetExtractor,
        fn_constructor_kwargs={"cfg": cfg, "out": str(out.resolve()), "use_gpu": gpus_per_actor > 0,
                               "threads": 0 if in_process else max(1, int(cpus_per_actor))},
        batch_size=1,  # one video per call: its snippets are batched inside
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cpus_per_actor,
        num_gpus=gpus_per_actor or None,
    )
    return list(ds.iter_rows())


# ---- reading ---------------------------------------------------------------------------------------


def load_features(folder: Path, index: pd.DataFrame, cfg: FeatureConfig, check_values: bool = False,
                  allow_missing: bool = False) -> pd.DataFrame:
    """The feature file of every video of `index`, checked, with what maps snippets to seconds.

    With `<folder>/features.json` (written by `extract_features`) stride and fps come from it. Without
    it the folder holds precomputed features, one `<video_id>.npy` [T, D] per video: the stride is
    `cfg.snippet_stride` and the fps `cfg.fps`, or the index's fps column when that is 0.

    Only the .npy headers are read (shape, dtype), so opening thousands of videos is quick; values are
    checked for NaN and inf only with `check_values` (reads every file once).

    Returns:
        DataFrame in index order: video_id, path (absolute .npy), snippets (T), dim (D), fps,
        snippet_stride.

    Raises:
        ValueError: a file that is not a 2-D float array with T >= 1, D differing between files,
            non-finite values (with `check_values`), no fps, or videos of the index without features
            (all listed; with `allow_missing` they are logged and left out instead).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"features folder {folder} does not exist")
    manifest_path = folder / FEATURES_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    table = _from_manifest(folder, index, manifest) if manifest else _from_files(folder, index, cfg)
    missing = table[table["path"].isna()]["video_id"].tolist()
    if missing:
        failed = (manifest or {}).get("failed", {})
        names = [f"{v} (failed: {failed[v]['reason']})" if v in failed else v for v in missing]
        text = f"{len(missing)} videos of the index have no features in {folder}: {', '.join(names[:20])}"
        text += " ..." if len(names) > 20 else ""
        if not allow_missing:
            raise ValueError(text + ". Extract them (extract_features) or leave them out of the index.")
        log.warning("%s; leaving them out", text)
        table = table.dropna(subset=["path"])
    _check_files(table, check_values)
    return table.reset_index(drop=True).astype({"snippets": np.int64, "dim": np.int64,
                                                "snippet_stride": np.int64, "fps": np.float64})


def _from_manifest(folder: Path, index: pd.DataFrame, manifest: dict) -> pd.DataFrame:
    rows = []
    for vid in index["video_id"]:
        entry = manifest["videos"].get(vid)
        path = feature_file(folder, vid)
        ok = entry is not None and path.is_file()
        rows.append((vid, str(path.resolve()) if ok else None, entry["snippets"] if ok else 0,
                     manifest["dim"], entry["fps"] if ok else np.nan, manifest["snippet_stride"]))
    return pd.DataFrame(rows, columns=list(FEATURE_COLUMNS))


def _from_files(folder: Path, index: pd.DataFrame, cfg: FeatureConfig) -> pd.DataFrame:
    if cfg.fps > 0:
        fps = np.full(len(index), cfg.fps)
    elif "fps" in index.columns:
        fps = index["fps"].to_numpy(np.float64)
    else:
        raise ValueError(f"{folder}: precomputed features need an fps: set features.fps, or give the index "
                         "an fps column")
    bad_fps = index["video_id"][~(fps > 0)].tolist()
    if bad_fps:
        raise ValueError(f"no valid fps for {bad_fps[:5]}: set features.fps to the rate the features were "
                         "extracted at")
    rows = []
    for vid, rate in zip(index["video_id"], fps):
        path = feature_file(folder, vid)
        shape = _npy_shape(path)[0] if path.is_file() else None
        two_d = shape is not None and len(shape) == 2
        rows.append((vid, None if shape is None else str(path.resolve()), shape[0] if two_d else 0,
                     shape[1] if two_d else 0, rate, cfg.snippet_stride))
    table = pd.DataFrame(rows, columns=list(FEATURE_COLUMNS))
    _warn_durations(table, index)
    return table


def _check_files(table: pd.DataFrame, check_values: bool) -> None:
    problems, dims = [], {}
    for path, snippets, dim in zip(table["path"], table["snippets"], table["dim"]):
        shape, dtype = _npy_shape(Path(path))
        if len(shape) != 2 or shape[0] < 1 or shape[1] < 1 or shape != (snippets, dim):
            problems.append(f"{path}: shape {shape}, expected [T >= 1, D]"
                            + (f" = ({snippets}, {dim}) as features.json says" if snippets else ""))
        elif not np.issubdtype(dtype, np.floating):
            problems.append(f"{path}: dtype {dtype}, expected floating point")
        else:
            dims.setdefault(shape[1], path)
            if check_values:
                problems += _non_finite(Path(path))
    if len(dims) > 1:
        problems.append("features of different D: " + ", ".join(f"D={d} in {p}" for d, p in dims.items()))
    if problems:
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        raise ValueError("bad feature files:\n  " + "\n  ".join(problems[:20]) + more)


def _non_finite(path: Path) -> list[str]:
    array = np.load(path, mmap_mode="r")
    for first in range(0, array.shape[0], 4096):  # bounded memory on long videos
        rows = np.flatnonzero(~np.isfinite(array[first : first + 4096]).all(axis=1))
        if rows.size:
            return [f"{path}: NaN or inf at snippet {first + int(rows[0])}"]
    return []


def _warn_durations(table: pd.DataFrame, index: pd.DataFrame) -> None:
    """Log videos whose features cover a duration unlike the video's: a stride or fps set wrongly."""
    if "num_frames" not in index.columns or "fps" not in index.columns:
        return
    have = (table["path"].notna() & (table["snippets"] > 0)).to_numpy()
    video_s = (index["num_frames"] / index["fps"]).to_numpy(np.float64)[have]
    t = table[have]
    feature_s = snippets_to_seconds(t["snippets"], t["fps"], t["snippet_stride"])
    off = np.abs(feature_s - video_s) > np.maximum(0.1 * video_s, 2 * feature_s / t["snippets"].to_numpy())
    if off.any():
        first = np.flatnonzero(off)[0]
        log.warning("features: %d videos' features span a duration unlike the video's (e.g. %s: %.1f s of "
                    "features, %.1f s of video): check features.snippet_stride and features.fps",
                    int(off.sum()), t["video_id"].iloc[first], feature_s[first], video_s[first])
