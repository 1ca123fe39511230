"""The canonical on-disk schemas of a dataset directory and of the label store.

A dataset directory (made by `raylab synth` or `raylab convert`) holds:

    dataset.json        {"name", "kind": "spatiotemporal" | "temporal", "classes": [str, ...], "source"}
    index.parquet       one row per readable video (INDEX_SCHEMA)
    quarantine.parquet  one row per video left out, with the reason (QUARANTINE_SCHEMA)
    gt/boxes.parquet    spatio-temporal ground truth, one row per (video_id, frame, actor) (GT_BOXES_SCHEMA)
    gt/segments.parquet temporal ground truth, one row per action instance (GT_SEGMENTS_SCHEMA)
    videos/...          the video files of a generated set

`index.path` is relative to `dataset.json`'s "video_root" when it has one (a converted dataset keeps its
videos where the user has them; `video_root` is that folder's absolute path), else relative to the
dataset directory (a generated set). `annotations.load_dataset` returns absolute paths.

Conventions (ARCHITECTURE.md): `video_id` is the path relative to the dataset root without extension;
frames are 0-based; boxes are [x1, y1, x2, y2] float pixels of the stored resolution; masks are
COCO-style RLE counts, column-major, starting with a run of zeros (see `rle.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

KINDS = ("spatiotemporal", "temporal")
SPLITS = ("train", "test")

INDEX_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("path", pa.string()),  # relative to the dataset root
        ("num_frames", pa.int32()),
        ("fps", pa.float32()),
        ("height", pa.int32()),
        ("width", pa.int32()),
        ("label", pa.int32()),  # class index of the video's action; -1 when a video has several (temporal)
        ("split", pa.string()),  # "train" | "test"
    ]
)

QUARANTINE_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("path", pa.string()),
        ("reason", pa.string()),
    ]
)

GT_BOXES_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("frame", pa.int32()),
        ("actor", pa.int32()),  # tube index within the video
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
        ("mask_rle", pa.list_(pa.int32())),  # null when the dataset has boxes only
        ("label", pa.int32()),
    ]
)

GT_SEGMENTS_SCHEMA = pa.schema(
    [
        ("video_id", pa.string()),
        ("t_start", pa.float64()),  # seconds
        ("t_end", pa.float64()),
        ("label", pa.int32()),
    ]
)

INDEX_FILE = "index.parquet"
QUARANTINE_FILE = "quarantine.parquet"
META_FILE = "dataset.json"
GT_BOXES_FILE = "gt/boxes.parquet"
GT_SEGMENTS_FILE = "gt/segments.parquet"


def write_meta(root: Path, name: str, kind: str, classes: list[str], source: str, **extra) -> None:
    """Write dataset.json (kind, class names, where the data came from, and any `extra` keys)."""
    if kind not in KINDS:
        raise ValueError(f"dataset kind must be one of {KINDS}, got {kind!r}")
    meta = {"name": name, "kind": kind, "classes": list(classes), "source": source, **extra}
    (Path(root) / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def read_meta(root: Path) -> dict:
    """Read dataset.json of a dataset directory, with a clear error when it is not one."""
    path = Path(root) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {root} is not a raylab dataset directory "
            "(make one with `raylab synth` or `raylab convert`)"
        )
    return json.loads(path.read_text())
