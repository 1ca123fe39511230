"""Canonical ground truth: validation, `raylab convert` from the formats people have, and loading.

`convert` reads an annotation file (adapters.py), finds and probes every video, checks everything,
and only then writes the canonical dataset directory (schema.py) in one rename, so that bad input
leaves nothing behind. Every problem found is reported at once, each naming file, video and frame.
Corrupt, truncated or empty videos are not errors: they go to quarantine.parquet with the reason.

Where the videos live: a converted dataset leaves the videos where the user has them. dataset.json
then holds "video_root" (absolute) and index.path is relative to it; without "video_root" (datasets
made by `raylab synth`) index.path is relative to the dataset directory. `resolve_video_path` does this.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import importlib
import json
import logging
import math
import os
import pickle
import shutil
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from raylab.data import schema
from raylab.data.video import VideoError, VideoInfo, probe_video

log = logging.getLogger(__name__)

FORMATS = ("ucf101-24", "jhmdb", "thumos14", "activitynet")
# annotation file names looked for in SRC when SRC is a folder
ANNOTATION_FILES = {
    "ucf101-24": ("UCF101v2-GT.pkl", "UCF101-GT.pkl"),
    "jhmdb": ("JHMDB-GT.pkl",),
    "thumos14": ("thumos14.json", "thumos_14_anno.json"),
    "activitynet": ("activity_net.v1-3.min.json", "anet1.3.json", "activitynet.json"),
}
# A box may stick out of the frame by this many pixels (ACT's +1-pixel box convention puts x2 at W).
BOX_TOLERANCE_PX = 1.0
# A segment may end this many seconds after the video's duration (JSON durations are rounded, and
# downloads differ a little in length); such segments are clipped to the duration of the decoded video.
SEGMENT_TOLERANCE_S = 1.0


@dataclass
class Problem:
    """One thing wrong with the input: where (file, video, frame as numbered in that file) and what."""

    file: str
    video: str | None
    frame: int | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.video is not None:
            where += f": video {self.video!r}"
        if self.frame is not None:
            where += f"{' ' if self.video is not None else ': '}frame {self.frame}"
        return f"{where}: {self.message}"


class AnnotationError(Exception):
    """Bad annotations; `problems` holds every problem found, and str() lists them one per line."""

    def __init__(self, problems: list[Problem], header: str | None = None):
        self.problems = list(problems)
        n = len(self.problems)
        head = header or f"{n} problem{'s' if n != 1 else ''} in the annotations:"
        super().__init__("\n".join([head] + [f"  {p}" for p in self.problems]))


# ------------------------------------------------------------------------------ restricted unpickler

_BUILTINS = ("dict", "list", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float",
             "complex", "bool")  # fmt: skip
_ALLOWED = {("builtins", n) for n in _BUILTINS} | {
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how protocol 0-2 pickles store bytes (numpy array buffers)
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),  # protocol 5 arrays
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that builds plain containers and numpy arrays only, and refuses every other global."""

    def find_class(self, module: str, name: str):
        module, name = _modern_name(module, name)
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"refused to load {module}.{name}")
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        return getattr(importlib.import_module(module), name)


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """`_codecs.encode` as protocol 0-2 pickles use it for bytes, with latin-1 / utf-8 only."""
    if codecs.lookup(encoding).name not in ("iso8859-1", "utf-8"):
        raise pickle.UnpicklingError(f"refused to load _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, encoding, errors)


def _modern_name(module: str, name: str) -> tuple[str, str]:
    """Python 2 names (__builtin__.unicode) and numpy<2 names (numpy.core.*) as spelled here."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    if module.startswith("numpy.core."):
        module = "numpy._core." + module[len("numpy.core.") :]
    return module, name


def restricted_load(path: str | Path) -> object:
    """Load an annotation pickle (Python 2 pickles too: str as latin-1) without running any code in it.

    Raises:
        AnnotationError: a global other than plain containers / numpy arrays, or an unreadable file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return RestrictedUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        if str(e).startswith("refused to load"):
            msg = f"{e} from {path.name}: only plain containers and numpy arrays are allowed in pickles"
        else:
            msg = f"not a readable pickle: {e}"
        raise AnnotationError([Problem(str(path), None, None, msg)]) from None
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise AnnotationError([Problem(str(path), None, None, f"not a readable pickle: {e!r}")]) from None


# ------------------------------------------------------------------------------------------- paths


def path_escape(name: str) -> str | None:
    """Why `name` cannot be a path inside the video root (absolute, '..', drive, NUL), or None if fine."""
    posix, win = PurePosixPath(name), PureWindowsPath(name)
    if not name or "\0" in name:
        return "empty video name or NUL character"
    if posix.is_absolute() or win.is_absolute() or win.drive:
        return "absolute path: video names must be relative to the video folder"
    if ".." in posix.parts or ".." in win.parts:
        return "path escapes the dataset root ('..')"
    return None


def find_video(
    root: Path, name: str, exts: tuple[str, ...], prefixes: tuple[str, ...] = ("",)
) -> Path | None:
    """The file of video `name` under root: root/<prefix><name><ext> for the first existing combination."""
    parent, stem = PurePosixPath(name).parent, PurePosixPath(name).name
    for prefix in prefixes:
        for ext in ("",) + exts if PurePosixPath(name).suffix in exts else exts:
            path = root / parent / f"{prefix}{stem}{ext}"
            if path.is_file():
                return path
    return None


def resolve_video_path(root: str | Path, meta: Mapping, path: str) -> Path:
    """Absolute file of an index row: relative to meta["video_root"] when set, else to the dataset root."""
    base = Path(root) / meta.get("video_root", ".")
    return (base / path).absolute()


# -------------------------------------------------------------------------------------- validation


def validate_boxes(
    gt: pd.DataFrame,
    videos: pd.DataFrame,
    num_classes: int,
    file: str,
    frame_base: int = 0,
    tolerance: float = BOX_TOLERANCE_PX,
) -> list[Problem]:
    """Check spatio-temporal ground truth (GT_BOXES columns) against the videos it refers to.

    Args:
        gt: rows of video_id, frame (0-based), actor, x1, y1, x2, y2, label, optional mask_rle.
        videos: video_id, num_frames, height, width of every video gt may refer to.
        num_classes: labels must lie in [0, num_classes).
        file: the file the rows came from, for messages.
        frame_base: added to frames in messages, so that they read as numbered in `file` (1 for ACT).
        tolerance: pixels a box may stick out of the frame.

    Returns:
        One Problem per bad row and check, ordered by video and frame.
    """
    m = gt.reset_index(drop=True).merge(
        videos[["video_id", "num_frames", "height", "width"]], on="video_id", how="left"
    )
    known = m["num_frames"].notna().to_numpy()
    problems = [
        Problem(file, v, None, "not in the dataset index") for v in m.loc[~known, "video_id"].unique()
    ]
    m = m[known]
    f, n, h, w = (m[c].to_numpy() for c in ("frame", "num_frames", "height", "width"))
    x1, y1, x2, y2 = (m[c].to_numpy(dtype=np.float64) for c in ("x1", "y1", "x2", "y2"))
    checks = [
        ((f < 0) | (f >= n), lambda r: f"frame outside the video ({int(r.num_frames)} frames)"),
        (~np.isfinite(np.stack([x1, y1, x2, y2])).all(0), lambda r: "box has a non-finite coordinate"),
        ((x1 < -tolerance) | (y1 < -tolerance) | (x2 > w + tolerance) | (y2 > h + tolerance),
         lambda r: f"box {_box(r)} outside the {int(r.width)}x{int(r.height)} frame (actor {r.actor})"),
        ((x2 <= x1) | (y2 <= y1),
         lambda r: f"empty box {_box(r)} (actor {r.actor}): needs x1 < x2 and y1 < y2"),
        # one problem per actor, at its first frame, not one per row
        (((m["label"] < 0) | (m["label"] >= num_classes)) & ~m.duplicated(["video_id", "actor", "label"]),
         lambda r: f"unknown class index {r.label} (actor {r.actor}): there are {num_classes} classes"),
    ]  # fmt: skip
    if "mask_rle" in m:
        bad = [
            c is not None and int(np.sum(c)) != hh * ww for c, hh, ww in zip(m["mask_rle"], h, w, strict=True)
        ]
        checks.append(
            (np.array(bad, dtype=bool), lambda r: f"mask RLE does not cover {r.height}x{r.width} pixels")
        )
    dup = m.duplicated(["video_id", "frame", "actor"], keep="first").to_numpy()
    checks.append((dup, lambda r: f"actor {r.actor} appears twice on this frame"))
    for mask, message in checks:
        for r in m[np.asarray(mask, dtype=bool)].itertuples(index=False):
            problems.append(Problem(file, r.video_id, int(r.frame) + frame_base, message(r)))
    return sorted(problems, key=lambda p: (p.video or "", -1 if p.frame is None else p.frame))


def _box(r) -> str:
    return f"[{r.x1:g}, {r.y1:g}, {r.x2:g}, {r.y2:g}]"


def validate_segments(
    gt: pd.DataFrame,
    durations: Mapping[str, float],
    num_classes: int,
    file: str,
    tolerance: float = SEGMENT_TOLERANCE_S,
) -> list[Problem]:
    """Check temporal ground truth (GT_SEGMENTS columns: video_id, t_start, t_end seconds, label).

    Args:
        durations: video_id -> duration in seconds of every video gt may refer to.
        tolerance: seconds a segment may end after the duration.

    Returns:
        One Problem per bad row and check (frame is None: segments are in seconds).
    """
    problems = []
    for r in gt.itertuples(index=False):
        if r.video_id not in durations:
            problems.append(Problem(file, r.video_id, None, "not in the dataset index"))
            continue
        seg, dur = f"segment [{r.t_start:g}, {r.t_end:g}] s", durations[r.video_id]
        if not (math.isfinite(r.t_start) and math.isfinite(r.t_end)):
            problems.append(Problem(file, r.video_id, None, f"{seg} has a non-finite time"))
            continue
        if r.t_start < 0:
            problems.append(Problem(file, r.video_id, None, f"{seg} starts before 0"))
        if r.t_end <= r.t_start:
            problems.append(Problem(file, r.video_id, None, f"{seg} is empty: needs t_start < t_end"))
        if r.t_end > dur + tolerance:
            problems.append(Problem(file, r.video_id, None, f"{seg} ends after the video ({dur:g} s)"))
        if not 0 <= r.label < num_classes:
            problems.append(
                Problem(file, r.video_id, None, f"unknown class index {r.label}: {num_classes} classes")
            )
    return problems


# ----------------------------------------------------------------------------------------- convert


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
    from raylab.data import adapters  # adapters imports this module

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
        schema.write_meta(tmp, out.name, source.kind, source.classes, str(ann.absolute()))
        meta = json.loads((tmp / schema.META_FILE).read_text()) | extra
        (tmp / schema.META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
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


# ------------------------------------------------------------------------------------------- load


def load_dataset(root: str | Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Read and check a canonical dataset directory (made by `raylab convert` or `raylab synth`).

    Returns:
        (meta from dataset.json, index with `path` made absolute, ground truth: boxes or segments).

    Raises:
        FileNotFoundError: root is not a dataset directory.
        AnnotationError: every problem found (missing tables or columns, unknown classes, frames or boxes
            outside the video, missing video files, paths escaping the root).
    """
    root = Path(root)
    meta = schema.read_meta(root)
    temporal = meta.get("kind") == "temporal"
    gt_file = schema.GT_SEGMENTS_FILE if temporal else schema.GT_BOXES_FILE
    gt_schema = schema.GT_SEGMENTS_SCHEMA if temporal else schema.GT_BOXES_SCHEMA
    problems: list[Problem] = []
    if meta.get("kind") not in schema.KINDS:
        problems.append(
            Problem(str(root / schema.META_FILE), None, None, f"kind must be one of {schema.KINDS}")
        )
    index = _read_table(root / schema.INDEX_FILE, schema.INDEX_SCHEMA, problems)
    gt = _read_table(root / gt_file, gt_schema, problems)
    if problems:
        raise AnnotationError(problems)
    problems += _check_index(root, meta, index)
    n_cls, file = len(meta.get("classes", [])), str(root / gt_file)
    if temporal:
        durations = dict(zip(index["video_id"], index["num_frames"] / index["fps"], strict=True))
        problems += validate_segments(gt, durations, n_cls, file)
    else:
        problems += validate_boxes(gt, index, n_cls, file)
    if problems:
        raise AnnotationError(problems)
    index["path"] = [str(resolve_video_path(root, meta, p)) for p in index["path"]]
    return meta, index, gt


def _read_table(path: Path, sch: pa.Schema, problems: list[Problem]) -> pd.DataFrame:
    if not path.is_file():
        problems.append(Problem(str(path), None, None, "missing"))
        return pd.DataFrame(columns=sch.names)
    table = pq.read_table(path)
    missing = [n for n in sch.names if n not in table.column_names]
    if missing:
        problems.append(Problem(str(path), None, None, f"missing columns {missing}"))
    return table.to_pandas()


def _check_index(root: Path, meta: dict, index: pd.DataFrame) -> list[Problem]:
    file, n_cls = str(root / schema.INDEX_FILE), len(meta.get("classes", []))
    problems = [
        Problem(file, v, None, "listed twice") for v in index["video_id"][index["video_id"].duplicated()]
    ]
    for r in index.itertuples(index=False):
        why = path_escape(r.path)
        if why:
            problems.append(Problem(file, r.video_id, None, f"path {r.path!r}: {why}"))
        elif not resolve_video_path(root, meta, r.path).is_file():
            problems.append(
                Problem(
                    file, r.video_id, None, f"video file {resolve_video_path(root, meta, r.path)} not found"
                )
            )
        if r.split not in schema.SPLITS:
            problems.append(
                Problem(file, r.video_id, None, f"split {r.split!r} is not one of {schema.SPLITS}")
            )
        if not -1 <= r.label < n_cls or r.num_frames <= 0:
            problems.append(
                Problem(file, r.video_id, None, f"label {r.label} or num_frames {r.num_frames} invalid")
            )
    return problems
