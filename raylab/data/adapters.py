"""Readers of the annotation formats people already have, into canonical ground-truth tables.

Each reader returns a `Source`: the videos the annotation file lists (with the split, class and the sizes
the file claims), the ground truth in the canonical columns of `schema.py` with `video_id` still spelled
as in the file, and the problems it found in the file's structure. Checks against the video files and
against frame / time ranges happen afterwards in `convert.convert`, in one place for all formats.

Formats:
    ucf101-24, jhmdb   ACT detector ground-truth pickles (UCF101v2-GT.pkl, JHMDB-GT.pkl): a dict with
                       labels, nframes, train_videos, test_videos, resolution, gttubes.
    jhmdb masks        SRC/puppet_mask/<class>/<video>/puppet_mask.mat, key 'part_mask' [H, W, T] of 0/1.
    thumos14,          {"database": {video: {"subset", "duration", "annotations": [{"segment": [t0, t1],
    activitynet         "label"}]}}}.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from raylab.data import bounds
from raylab.data.annotations import AnnotationError, Problem, path_escape, restricted_load
from raylab.data.rle import rle_encode

log = logging.getLogger(__name__)

ACT_KEYS = ("labels", "nframes", "train_videos", "test_videos", "resolution", "gttubes")
ACT_VIDEO_EXTS = (".avi", ".mp4", ".mkv", ".webm")
JSON_VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".avi")
# subset names of each JSON format -> raylab split (ActivityNet's testing subset has no public labels)
SUBSETS = {
    "thumos14": {"validation": "train", "test": "test"},
    "activitynet": {"training": "train", "validation": "test"},
}


@dataclass
class VideoEntry:
    """One video as the annotation file describes it."""

    name: str  # as spelled in the annotation file (before the file is found)
    split: str  # "train" | "test"
    label: int  # class index of the video, -1 when it has several or none
    num_frames: int | None = None  # ACT 'nframes'
    height: int | None = None  # ACT 'resolution'
    width: int | None = None
    duration: float | None = None  # seconds, JSON 'duration'


@dataclass
class Source:
    """What an annotation file says, before it is checked against the videos."""

    kind: str  # "spatiotemporal" | "temporal"
    file: str  # the annotation file, for messages
    classes: list[str]
    videos: list[VideoEntry]
    gt: pd.DataFrame  # canonical GT columns; video_id = VideoEntry.name
    problems: list[Problem] = field(default_factory=list)
    exts: tuple[str, ...] = ACT_VIDEO_EXTS
    prefixes: tuple[str, ...] = ("",)  # file-name prefixes to try ("v_" for ActivityNet)


# ---------------------------------------------------------------------------------------------- ACT


def read_act(path: Path, split: int = 0) -> Source:
    """Read an ACT-style ground-truth pickle (UCF101-24 or J-HMDB) with the restricted unpickler.

    Args:
        path: the pickle.
        split: which of train_videos / test_videos to use (UCF101-24 has one, J-HMDB three).

    Returns:
        A spatio-temporal Source; gt frames are 0-based (the file's are 1-based).

    Raises:
        AnnotationError: the file is not an ACT ground-truth dict, or has no such split.
    """
    file = str(path)
    data = restricted_load(path)
    missing = [k for k in ACT_KEYS if not isinstance(data, dict) or k not in data]
    if missing:
        raise AnnotationError(
            [Problem(file, None, None, f"not an ACT ground-truth pickle: missing {missing}")]
        )
    try:
        return _read_act(file, data, split)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as e:  # a key of the wrong shape
        msg = f"not an ACT ground-truth pickle: {type(e).__name__}: {str(e)[:200]}"
        raise AnnotationError([Problem(file, None, None, msg)]) from None


def _read_act(file: str, data: dict, split: int) -> Source:
    n_splits = len(data["train_videos"])
    if not 0 <= split < n_splits:
        raise AnnotationError(
            [
                Problem(
                    file, None, None, f"split {split} does not exist: the file has splits 0..{n_splits - 1}"
                )
            ]
        )
    classes = [str(c) for c in data["labels"]]
    problems: list[Problem] = []
    videos, parts = [], []
    for name, subset in _act_split(file, data, split, problems).items():
        entry = _act_entry(file, data, name, subset, problems)
        if entry is None:
            continue
        videos.append(entry)
        parts.extend(_act_tube_rows(file, name, data["gttubes"][name], problems))
    return Source("spatiotemporal", file, classes, videos, _box_frame(parts), problems, ACT_VIDEO_EXTS)


def _act_split(file: str, data: dict, split: int, problems: list[Problem]) -> dict[str, str]:
    """video name -> "train" | "test" for the chosen split, in file order."""
    assign: dict[str, str] = {}
    for subset, key in (("train", "train_videos"), ("test", "test_videos")):
        for name in data[key][split]:
            name = str(name)
            if assign.get(name, subset) != subset:
                problems.append(
                    Problem(file, name, None, f"listed in both train_videos and test_videos[{split}]")
                )
            assign[name] = subset
    return assign


def _act_entry(file: str, data: dict, name: str, subset: str, problems: list[Problem]) -> VideoEntry | None:
    absent = [k for k in ("gttubes", "nframes", "resolution") if name not in data[k]]
    if absent:
        problems.append(
            Problem(file, name, None, f"in the {subset} split but missing from {', '.join(absent)}")
        )
        return None
    try:
        height, width = (int(v) for v in data["resolution"][name])
        num_frames = int(data["nframes"][name])
    except (TypeError, ValueError):
        problems.append(
            Problem(file, name, None, "resolution must be (height, width) and nframes an integer")
        )
        return None
    labels = {int(k) for k in data["gttubes"][name]}
    label = labels.pop() if len(labels) == 1 else -1
    return VideoEntry(name, subset, label, num_frames, height, width)


def _act_tube_rows(file: str, name: str, tubes_by_label: dict, problems: list[Problem]) -> list[pd.DataFrame]:
    """One frame of GT_BOXES columns per tube; actor = tube number within the video."""
    parts, actor = [], 0
    for label, tubes in tubes_by_label.items():
        for tube in tubes:
            tube = _tube_array(tube)
            if tube is None or tube.ndim != 2 or tube.shape[1] != 5:
                shape = "no array of numbers" if tube is None else f"shape {tube.shape}"
                problems.append(Problem(file, name, None, f"tube {actor} has {shape}, expected [N, 5]"))
            else:
                parts.append(
                    pd.DataFrame(
                        {
                            "video_id": name,
                            "frame": np.rint(tube[:, 0]).astype(np.int64) - 1,  # 1-based -> 0-based
                            "actor": actor,
                            "x1": tube[:, 1],
                            "y1": tube[:, 2],
                            "x2": tube[:, 3],
                            "y2": tube[:, 4],
                            "mask_rle": None,
                            "label": int(label),
                        }
                    )
                )
            actor += 1
    return parts


def _tube_array(tube) -> np.ndarray | None:
    """A tube as float64 [N, 5], its shape and dtype checked before it is converted; None if not numbers."""
    if isinstance(tube, np.ndarray):
        return tube.astype(np.float64) if tube.dtype.kind in "biuf" else None
    try:
        return np.asarray(tube, dtype=np.float64)  # a list: its size is bounded by safe_pickle.check_built
    except (TypeError, ValueError):
        return None


def _box_frame(parts: list[pd.DataFrame]) -> pd.DataFrame:
    cols = ["video_id", "frame", "actor", "x1", "y1", "x2", "y2", "mask_rle", "label"]
    if not parts:
        return pd.DataFrame(
            {c: pd.Series(dtype=object if c in ("video_id", "mask_rle") else float) for c in cols}
        )
    return pd.concat(parts, ignore_index=True)[cols]


# -------------------------------------------------------------------------------------- J-HMDB masks


def attach_jhmdb_masks(source: Source, mask_root: Path) -> int:
    """Fill gt.mask_rle from J-HMDB puppet masks where a video has one; returns how many videos had one.

    Problems (mask file unreadable, shape unlike the resolution, frame beyond the mask) go to
    source.problems. Videos without a puppet_mask.mat keep null masks.
    """
    if not mask_root.is_dir():
        log.info("no %s: J-HMDB ground truth will have boxes only", mask_root)
        return 0
    gt, found = source.gt, 0
    rows_by_video = gt.groupby("video_id", sort=False).indices
    for entry in source.videos:
        if path_escape(entry.name):  # reported with the videos (convert._locate_videos); never opened
            continue
        path = mask_root / entry.name / "puppet_mask.mat"
        if entry.name not in rows_by_video or not path.is_file():
            continue
        masks = _load_part_mask(path, entry, source.problems)
        if masks is None:
            continue
        found += 1
        for i in rows_by_video[entry.name]:
            frame = int(gt.at[i, "frame"])
            if 0 <= frame < masks.shape[2]:
                gt.at[i, "mask_rle"] = rle_encode(masks[:, :, frame])
            else:
                source.problems.append(
                    Problem(
                        str(path),
                        entry.name,
                        frame + 1,
                        f"no mask for this frame: the mask has {masks.shape[2]}",
                    )
                )
    log.info("puppet masks found for %d of %d videos", found, len(source.videos))
    return found


def _load_part_mask(path: Path, entry: VideoEntry, problems: list[Problem]) -> np.ndarray | None:
    """part_mask [H, W, T] of a puppet_mask.mat, or None (with a Problem) when unusable."""
    import scipy.io

    try:
        masks = scipy.io.loadmat(str(path))["part_mask"]
    except KeyError:
        problems.append(Problem(str(path), entry.name, None, "no 'part_mask' variable in the .mat file"))
        return None
    except Exception as e:  # scipy raises ValueError / MatReadError / NotImplementedError (v7.3)
        problems.append(Problem(str(path), entry.name, None, f"cannot read the mask file: {e}"))
        return None
    if masks.ndim == 2:
        masks = masks[:, :, None]
    if masks.ndim != 3 or masks.shape[:2] != (entry.height, entry.width):
        problems.append(
            Problem(
                str(path),
                entry.name,
                None,
                f"mask of shape {masks.shape} does not match the video resolution "
                f"{entry.height}x{entry.width}",
            )
        )
        return None
    return masks


# --------------------------------------------------------------------------------- THUMOS / ActivityNet


def read_activity_json(path: Path, fmt: str) -> Source:
    """Read a THUMOS'14 or ActivityNet JSON ({"database": {video: {subset, duration, annotations}}}).

    THUMOS'14: subset validation -> train, test -> test. ActivityNet: training -> train,
    validation -> test. Other subsets (ActivityNet testing, no labels) are skipped.
    Classes are the sorted unique labels of the kept videos.

    Raises:
        AnnotationError: the file is not JSON or has no "database" dict.
    """
    file = str(path)
    try:
        document = bounds.loads_json(bounds.read_bytes(path))
    except OSError as e:
        raise AnnotationError([Problem(file, None, None, f"cannot read the file: {e.strerror}")]) from None
    except ValueError as e:  # not JSON, not UTF-8, too large or nested too deeply
        raise AnnotationError([Problem(file, None, None, f"not a valid annotation JSON: {e}")]) from None
    database = document.get("database") if isinstance(document, dict) else None
    if not isinstance(database, dict):
        raise AnnotationError(
            [Problem(file, None, None, 'no "database" object: not a THUMOS/ActivityNet JSON')]
        )
    problems: list[Problem] = []
    kept: list[tuple[str, str, float | None, list[tuple[float, float, str]]]] = []
    skipped = 0
    for name, item in database.items():
        split = SUBSETS[fmt].get(str(item.get("subset", "")).lower()) if isinstance(item, dict) else None
        if split is None:
            skipped += 1
            continue
        duration = _duration(file, name, item.get("duration"), problems)
        kept.append(
            (str(name), split, duration, _segments(file, name, item.get("annotations", []), problems))
        )
    if skipped:
        log.info("%s: skipped %d videos of subsets other than %s", file, skipped, sorted(SUBSETS[fmt]))
    classes = sorted({lab for *_, segs in kept for *_, lab in segs})
    cls = {c: i for i, c in enumerate(classes)}
    videos, rows = [], []
    for name, split, duration, segs in kept:
        labels = {cls[lab] for *_, lab in segs}
        videos.append(VideoEntry(name, split, labels.pop() if len(labels) == 1 else -1, duration=duration))
        rows.extend((name, t0, t1, cls[lab]) for t0, t1, lab in segs)
    gt = pd.DataFrame(rows, columns=["video_id", "t_start", "t_end", "label"])
    gt = gt.astype({"video_id": object, "t_start": np.float64, "t_end": np.float64, "label": np.int64})
    return Source("temporal", file, classes, videos, gt, problems, JSON_VIDEO_EXTS, ("", "v_"))


def _duration(file: str, name: str, value, problems: list[Problem]) -> float | None:
    try:
        duration = float(value)
    except (TypeError, ValueError):
        duration = math.nan
    if not math.isfinite(duration) or duration <= 0:
        problems.append(
            Problem(file, name, None, f"duration must be a positive number of seconds, got {value!r}")
        )
        return None
    return duration


def _segments(file: str, name: str, annotations, problems: list[Problem]) -> list[tuple[float, float, str]]:
    out = []
    for k, ann in enumerate(annotations if isinstance(annotations, list) else [annotations]):
        try:
            t0, t1 = (float(t) for t in ann["segment"])
            label = str(ann["label"])
        except (TypeError, KeyError, ValueError):
            problems.append(
                Problem(file, name, None, f'annotation {k} needs "segment": [t0, t1] and "label"')
            )
            continue
        out.append((t0, t1, label))
    return out
