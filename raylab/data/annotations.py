"""Canonical ground truth: problems, validation, the restricted unpickler, paths, and loading.

Validation reports every problem at once, each naming file, video and frame (`Problem`); `convert.py`
uses it before writing a converted dataset, and `load_dataset` before handing a dataset to a run.

Where the videos live: a converted dataset leaves the videos where the user has them. dataset.json
then holds "video_root" (absolute) and index.path is relative to it; without "video_root" (datasets
made by `raylab synth`) index.path is relative to the dataset directory. `resolve_video_path` does this.
"""

from __future__ import annotations

import logging
import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from raylab.data import safe_pickle, schema

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


def restricted_load(path: str | Path) -> object:
    """Load an annotation pickle (Python 2 pickles too: str as latin-1) without running any code in it,
    and within bounds on what it builds (safe_pickle.py).

    Raises:
        AnnotationError: a global other than plain containers / numpy arrays, a bound exceeded, or an
            unreadable file.
    """
    path = Path(path)
    try:
        return safe_pickle.load(path)
    except safe_pickle.PickleRefused as e:
        if str(e).startswith("refused to load"):
            msg = f"{e} from {path.name}: only plain containers and numpy arrays are allowed in pickles"
        else:
            msg = f"refused: the pickle {e}"
        raise AnnotationError([Problem(str(path), None, None, msg)]) from None
    except pickle.UnpicklingError as e:
        raise AnnotationError([Problem(str(path), None, None, f"not a readable pickle: {e}")]) from None
    except OSError as e:
        msg = f"cannot read the file: {e.strerror}"
        raise AnnotationError([Problem(str(path), None, None, msg)]) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
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
