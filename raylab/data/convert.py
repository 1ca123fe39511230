"""`raylab convert`: a dataset the user has -> the canonical dataset directory (schema.py).

`convert` reads an annotation file (adapters.py), finds and probes every video, checks everything
(annotations.validate_boxes / validate_segments), and only then writes the canonical directory in one
rename, so that bad input leaves nothing behind. Every problem found is reported at once, each naming
file, video and frame. Corrupt, truncated or empty videos are not errors: they go to
quarantine.parquet with the reason.
"""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from raylab.data import adapters, schema
from raylab.data.annotations import (
    ANNOTATION_FILES,
    FORMATS,
    AnnotationError,
    Problem,
    find_video,
    path_escape,
    validate_boxes,
    validate_segments,
)
from raylab.data.video import VideoError, VideoInfo, probe_video

log = logging.getLogger(__name__)


def convert(
    fmt: str,
    src: str | Path,
    out: str | Path,
    videos: str | Path | None = None,
    split: int = 0,
    workers: int | None = None,
) -> dict:
    """Turn a dataset the user has into a canonical dataset directory (`raylab convert`).

    Everything is checked before anything is written; on any problem OUT is neither created nor changed.
    Unreadable videos are not problems: they are listed in quarantine.parquet and the rest goes on.

    Args:
        fmt: one of FORMATS.
        src: the annotation file, or a folder holding it (names in ANNOTATION_FILES) and, for J-HMDB,
            puppet_mask/.
        out: the dataset directory to create; must not exist or be empty.
        videos: folder of the video files (default SRC/videos, or next to the file when SRC is one).
        split: which train/test split of an ACT pickle to use (J-HMDB has 0, 1, 2).
        workers: threads probing videos (default min(4, CPUs)).

    Returns:
        Summary: format, out, kind, videos, train, test, quarantined, classes, rows, video_root.

    Raises:
        AnnotationError: every problem found, each naming file, video and frame.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    src, out = Path(src), Path(out)
    base = src if src.is_dir() else src.parent
    _check_out(out)
    video_root = (Path(videos) if videos is not None else base / "videos").absolute()
    ann = _annotation_file(fmt, src)
    if not video_root.is_dir():
        msg = "video folder not found: put the videos there or pass --videos DIR"
        raise AnnotationError([Problem(str(video_root), None, None, msg)])
    source = _read_source(fmt, ann, split, base)
    problems = list(source.problems)
    files = _locate_videos(source, video_root, problems)
    infos, quarantine = _probe_videos(files, video_root, workers)
    problems += _check_gt(source, files, infos)
    if not problems and not infos:
        problems.append(Problem(str(video_root), None, None, "no readable video: every video is quarantined"))
    if problems:
        n = len(problems)
        raise AnnotationError(
            problems, f"{n} problem{'s' if n != 1 else ''} in the {fmt} input; nothing written:"
        )
    index = _index_frame(source, files, infos, video_root)
    gt = _canonical_gt(source, files, infos, video_root)
    meta = {"video_root": str(video_root), "format": fmt, "split": split}
    _write_dataset(out, source, ann, meta, index, gt, quarantine)
    if quarantine:
        log.warning("%d of %d videos left out (unreadable): see %s", len(quarantine), len(files),
                    out / schema.QUARANTINE_FILE)  # fmt: skip
    return {
        "format": fmt, "out": str(out), "kind": source.kind, "videos": len(index),
        "train": int((index["split"] == "train").sum()), "test": int((index["split"] == "test").sum()),
        "quarantined": len(quarantine), "classes": len(source.classes), "rows": len(gt),
        "video_root": str(video_root),
    }  # fmt: skip


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        msg = "already exists and is not empty: convert never overwrites, choose a new OUT or remove this one"
        raise AnnotationError([Problem(str(out), None, None, msg)])


def _annotation_file(fmt: str, src: Path) -> Path:
    if src.is_file():
        return src
    if src.is_dir():
        for name in ANNOTATION_FILES[fmt]:
            if (src / name).is_file():
                return src / name
        found = sorted(src.glob("*.pkl" if fmt in ("ucf101-24", "jhmdb") else "*.json"))
        if len(found) == 1:
            return found[0]
    msg = f"no annotation file: give the file itself, or a folder holding one of {ANNOTATION_FILES[fmt]}"
    raise AnnotationError([Problem(str(src), None, None, msg)])


def _read_source(fmt: str, ann: Path, split: int, base: Path):

    if fmt in ("thumos14", "activitynet"):
        return adapters.read_activity_json(ann, fmt)
    source = adapters.read_act(ann, split)
    if fmt == "jhmdb":
        adapters.attach_jhmdb_masks(source, base / "puppet_mask")
    return source


def _locate_videos(source, video_root: Path, problems: list[Problem]) -> dict[str, Path]:
    """name -> video file of every listed video; a Problem for each name that escapes or has no file."""
    files = {}
    for entry in source.videos:
        why = path_escape(entry.name)
        path = None if why else find_video(video_root, entry.name, source.exts, source.prefixes)
        if why:
            problems.append(Problem(source.file, entry.name, None, why))
        elif path is None:
            tried = "|".join(source.exts)
            pre = "[v_]" if "v_" in source.prefixes else ""
            msg = f"video file not found: looked for {video_root}/{pre}{entry.name}{{{tried}}}"
            problems.append(Problem(source.file, entry.name, None, msg))
        else:
            files[entry.name] = path
    return files


def _probe_videos(
    files: dict[str, Path], video_root: Path, workers: int | None
) -> tuple[dict[str, VideoInfo], list[dict]]:
    """Probe every file in parallel threads; returns name -> VideoInfo and the quarantine rows."""
    from tqdm import tqdm

    def probe(path: Path) -> VideoInfo | VideoError:
        try:
            return probe_video(path)
        except VideoError as e:
            return e

    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        results = list(tqdm(pool.map(probe, files.values()), total=len(files), desc="probing videos",
                            disable=None, leave=False))  # fmt: skip
    infos, quarantine = {}, []
    for (name, path), res in zip(files.items(), results, strict=True):
        if isinstance(res, VideoError):
            vid, rel = _video_id(path, video_root)
            quarantine.append({"video_id": vid, "path": rel, "reason": res.reason})
            log.warning("quarantined %s: %s", path, res.reason)
        else:
            infos[name] = res
    return infos, quarantine


def _video_id(path: Path, video_root: Path) -> tuple[str, str]:
    """(video_id, path) of a file: its path relative to the video root, without and with extension."""
    rel = path.relative_to(video_root)
    return rel.with_suffix("").as_posix(), rel.as_posix()


def _check_gt(source, files: dict[str, Path], infos: dict[str, VideoInfo]) -> list[Problem]:
    """Problems of the ground truth against the annotation's own sizes and the decoded videos."""
    n_cls = len(source.classes)
    if source.kind == "temporal":
        durations = {e.name: e.duration for e in source.videos if e.duration is not None}
        gt = source.gt[source.gt["video_id"].isin(list(durations))]
        problems = validate_segments(gt, durations, n_cls, source.file)
        for r in gt[gt["video_id"].isin(list(infos))].itertuples(index=False):
            decoded = _seconds(infos[r.video_id])
            if r.t_start >= decoded:
                msg = f"segment starts at {r.t_start:g} s, after the end of the video file ({decoded:.2f} s)"
                problems.append(Problem(source.file, r.video_id, None, msg))
        return problems
    problems, limits = [], []
    for e in source.videos:
        info = infos.get(e.name)
        n = e.num_frames if info is None else min(e.num_frames, info.num_frames)
        limits.append((e.name, n, e.height, e.width))
        if info is not None and (info.height, info.width) != (e.height, e.width):
            msg = (f"the video is {info.height}x{info.width} (HxW) but the annotation's resolution is "
                   f"{e.height}x{e.width}: boxes would not line up, use the original videos")  # fmt: skip
            problems.append(Problem(str(files[e.name]), e.name, None, msg))
    limits = pd.DataFrame(limits, columns=["video_id", "num_frames", "height", "width"])
    return problems + validate_boxes(source.gt, limits, n_cls, source.file, frame_base=1)


def _seconds(info: VideoInfo) -> float:
    return info.num_frames / info.fps


def _index_frame(
    source, files: dict[str, Path], infos: dict[str, VideoInfo], video_root: Path
) -> pd.DataFrame:
    rows = []
    for e in source.videos:
        if e.name in infos:
            info, (vid, rel) = infos[e.name], _video_id(files[e.name], video_root)
            rows.append((vid, rel, info.num_frames, info.fps, info.height, info.width, e.label, e.split))
    return pd.DataFrame(rows, columns=schema.INDEX_SCHEMA.names)


def _canonical_gt(
    source, files: dict[str, Path], infos: dict[str, VideoInfo], video_root: Path
) -> pd.DataFrame:
    """GT rows of the readable videos, keyed by video_id; segments clipped to the decoded duration."""
    gt = source.gt[source.gt["video_id"].isin(list(infos))].copy()
    if source.kind == "temporal":
        ends = {e.name: min(e.duration, _seconds(infos[e.name])) for e in source.videos if e.name in infos}
        gt["t_end"] = np.minimum(gt["t_end"].to_numpy(), gt["video_id"].map(ends).to_numpy(dtype=np.float64))
    gt["video_id"] = gt["video_id"].map({n: _video_id(p, video_root)[0] for n, p in files.items()})
    return gt.reset_index(drop=True)


def _write_dataset(out: Path, source, ann: Path, extra: dict, index, gt, quarantine: list[dict]) -> None:
    """Write everything into a temporary sibling folder, then rename it to OUT (all or nothing)."""
    temporal = source.kind == "temporal"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.converting-{os.getpid()}"
    try:
        (tmp / "gt").mkdir(parents=True)
        schema.write_meta(tmp, out.name, source.kind, source.classes, str(ann.absolute()), **extra)
        _write_table(index, schema.INDEX_SCHEMA, tmp / schema.INDEX_FILE)
        q = pd.DataFrame(quarantine, columns=schema.QUARANTINE_SCHEMA.names)
        _write_table(q, schema.QUARANTINE_SCHEMA, tmp / schema.QUARANTINE_FILE)
        gt_schema = schema.GT_SEGMENTS_SCHEMA if temporal else schema.GT_BOXES_SCHEMA
        _write_table(gt, gt_schema, tmp / (schema.GT_SEGMENTS_FILE if temporal else schema.GT_BOXES_FILE))
        if out.exists():
            out.rmdir()  # empty, checked by _check_out
        tmp.rename(out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _write_table(df: pd.DataFrame, sch: pa.Schema, path: Path) -> None:
    df = df[sch.names].copy()
    for f in sch:
        if pa.types.is_integer(f.type) or pa.types.is_floating(f.type):
            df[f.name] = df[f.name].astype(f.type.to_pandas_dtype())
        elif pa.types.is_list(f.type):
            df[f.name] = [None if v is None else np.asarray(v, dtype=np.int32) for v in df[f.name]]
    pq.write_table(pa.Table.from_pandas(df, schema=sch, preserve_index=False), path)
