"""The sparse label store: append-only parquet parts recorded in a checksummed manifest.

One row per annotated frame (ASL) or per annotated video (AL-STAL, frame = -1). On disk:

    labels/
        manifest.json        {"version": 1, "appends": [{"seq", "file", "sha256", "rows", "cycle",
                             "source", "created_at"}, ...]} in append order: the only source of truth
        part-000000.parquet  one file per append (LABELS_SCHEMA)
        part-000001.parquet
        .lock                held (fcntl.flock) by the one process appending

An append writes its parquet to a hidden temporary name, fsyncs it, renames it to `part-NNNNNN.parquet`,
then writes the new manifest the same way and renames it onto manifest.json. That rename is the commit
point, so a kill at any instant leaves the store either before or after the append. Parts and temporary
files that the manifest does not list are leftovers of an interrupted append: readers ignore them and the
next append removes them. A listed part that is missing or whose sha256 differs is corruption and is
reported, never silently dropped.

`created_at` is a UTC timestamp (microseconds), the same for all rows of one append.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from raylab.data.label_rows import (  # noqa: F401  (LABELS_SCHEMA, SOURCES, WHOLE_VIDEO: public here too)
    LABELS_SCHEMA,
    SOURCES,
    WHOLE_VIDEO,
    duplicate_problems,
    index_lookup,
    normalize_rows,
)

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
LOCK = ".lock"
PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
TMP_SUFFIX = ".tmp"  # temporary names are hidden: "." + final name + ".tmp"
MAX_LISTED = 20  # problems listed in one validation error; the count of the rest follows


class LabelStoreError(Exception):
    """Base class of label store errors."""


class LabelValidationError(LabelStoreError, ValueError):
    """Rows rejected by `LabelStore.append`; nothing was written. `problems` lists every issue."""

    def __init__(self, message: str, problems: list[str]):
        super().__init__(message)
        self.problems = problems


class LabelStoreCorruptError(LabelStoreError):
    """The manifest or a part it lists is missing, unreadable or fails its checksum."""


class LabelStoreWriteError(LabelStoreError, OSError):
    """An OSError (disk full, permission, ...) during an append; the store is left as it was."""


class LabelStore:
    """Append-only store of annotations, one directory.

    Args:
        path: the store directory, created when missing.
        index: optional dataset index (DataFrame or Table with video_id, num_frames, height, width);
            when given, appends are checked against it (video known, frame in range, box inside frame,
            mask size) and `labelled_fraction` can count whole-video rows.
        lock_timeout: seconds an append waits for another process's lock before failing.
    """

    def __init__(self, path: str | Path, index: pd.DataFrame | pa.Table | None = None,
                 lock_timeout: float = 30.0):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.lock_timeout = lock_timeout
        self._index = index_lookup(index) if index is not None else None
        self.reload()

    # ---- reading -------------------------------------------------------------------------------

    def reload(self) -> None:
        """Re-read the manifest and every listed part (verifying checksums)."""
        self._entries = self._read_manifest()
        parts = [self._read_part(e) for e in self._entries]
        self._table = pa.concat_tables(parts) if parts else LABELS_SCHEMA.empty_table()
        self._keys = _keys_of(self._table)

    def _read_manifest(self) -> list[dict]:
        path = self.path / MANIFEST
        if not path.exists():
            return []
        try:
            entries = json.loads(path.read_text())["appends"]
        except (ValueError, KeyError, TypeError) as e:
            raise LabelStoreCorruptError(
                f"label store {self.path}: {path} is not a valid manifest ({e}); it is only ever replaced "
                "atomically, so it was changed from outside: restore it from a backup"
            ) from e
        for i, entry in enumerate(entries):
            if entry.get("seq") != i:
                raise LabelStoreCorruptError(
                    f"label store {self.path}: manifest entry {i} has seq {entry.get('seq')!r}, expected {i}"
                )
        return entries

    def _read_part(self, entry: dict) -> pa.Table:
        path = self.path / entry["file"]
        try:
            data = path.read_bytes()
        except FileNotFoundError as e:
            raise LabelStoreCorruptError(
                f"label store {self.path}: {path} (append {entry['seq']}, cycle {entry['cycle']}) is listed "
                "in the manifest but missing: restore it from a backup"
            ) from e
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry["sha256"]:
            raise LabelStoreCorruptError(
                f"label store {self.path}: checksum mismatch for {path} (append {entry['seq']}): manifest "
                f"says sha256 {entry['sha256']}, file has {digest}; the file was modified or damaged after "
                "it was committed: restore it from a backup"
            )
        table = _upgrade(pq.read_table(pa.BufferReader(data)))
        if not table.schema.equals(LABELS_SCHEMA) or table.num_rows != entry["rows"]:
            raise LabelStoreCorruptError(
                f"label store {self.path}: {path} has {table.num_rows} rows and schema {table.schema}, "
                f"expected {entry['rows']} rows of LABELS_SCHEMA"
            )
        return table

    # ---- queries -------------------------------------------------------------------------------

    @property
    def appends(self) -> list[dict]:
        """Manifest entries in append order: seq, file, sha256, rows, cycle, source, created_at."""
        return [dict(e) for e in self._entries]

    def __len__(self) -> int:
        return self._table.num_rows

    def table(self) -> pa.Table:
        """All stored rows (LABELS_SCHEMA), in append order."""
        return self._table

    def to_pandas(self) -> pd.DataFrame:
        """All stored rows as a DataFrame, in append order."""
        return self._table.to_pandas()

    def labelled_frames(self, video_id: str | None = None) -> dict[str, np.ndarray] | np.ndarray:
        """Annotated frames, sorted (int64; -1 marks a whole-video annotation).

        Args:
            video_id: one video, or None for all.

        Returns:
            the frames of `video_id` (empty when it has none), or a dict video_id -> frames.
        """
        df = pd.DataFrame({"video_id": self._table["video_id"].to_pylist(),
                           "frame": self._table["frame"].to_numpy().astype(np.int64)})
        if video_id is not None:
            return np.sort(df["frame"].to_numpy()[df["video_id"].to_numpy() == video_id])
        return {v: np.sort(g.to_numpy()) for v, g in df.groupby("video_id", sort=False)["frame"]}

    def is_labelled(self, video_id: str, frame: int) -> bool:
        """Whether `frame` of `video_id` is annotated (its own row, or a whole-video row)."""
        return (video_id, int(frame)) in self._keys or (video_id, WHOLE_VIDEO) in self._keys

    def labelled_videos(self) -> list[str]:
        """Videos with at least one annotation, in order of first annotation."""
        return list(pd.unique(np.asarray(self._table["video_id"].to_pylist(), dtype=object)))

    def labelled_fraction(self, total_frames: int | None = None) -> float:
        """Annotated frames / total frames.

        Args:
            total_frames: the denominator; defaults to the sum of num_frames of the store's index.
                A whole-video row counts all num_frames of its video, which needs the index.

        Returns:
            the fraction in [0, 1].
        """
        if total_frames is None:
            if self._index is None:
                raise ValueError(
                    f"label store {self.path}: pass total_frames, or open the store with an index"
                )
            total_frames = sum(n for n, _, _ in self._index.values())
        if total_frames <= 0:
            raise ValueError(f"total_frames must be positive, got {total_frames}")
        whole = {v for v, f in self._keys if f == WHOLE_VIDEO}
        if whole and self._index is None:
            raise ValueError(f"label store {self.path}: whole-video rows need the index to count frames")
        count = sum(1 for v, f in self._keys if f != WHOLE_VIDEO and v not in whole)
        count += sum(self._index[v][0] for v in whole if v in self._index) if whole else 0
        return count / total_frames

    def cost(self, cycle: int | None = None) -> float:
        """Total annotation cost (clicks), of all cycles or of one."""
        costs = self._table["cost"].to_numpy()
        if cycle is not None:
            costs = costs[self._table["cycle"].to_numpy() == cycle]
        return float(costs.sum())

    def cost_per_cycle(self) -> dict[int, float]:
        """Annotation cost per cycle, cycles ascending."""
        return {c: self.cost(c) for c in self.cycles()}

    def cycles(self) -> list[int]:
        """Cycles that have rows, ascending."""
        return sorted({int(c) for c in self._table["cycle"].to_numpy()})

    # ---- appending -----------------------------------------------------------------------------

    def append(self, rows: pd.DataFrame | pa.Table | list[dict], cycle: int, source: str) -> int:
        """Validate `rows` and add them as one atomic append.

        Args:
            rows: columns video_id, frame, cost (required) and boxes, box_labels, mask_rle, segments
                (optional, default empty); see LABELS_SCHEMA. cycle/source columns, if present, must
                match the arguments.
            cycle: active-learning cycle (>= 0).
            source: "init", "oracle" or "human".

        Returns:
            the append's sequence number (0 for the first append).

        Raises:
            LabelValidationError: bad rows (every problem listed, naming video and frame); nothing written.
            LabelStoreWriteError: an OSError while writing; the store is exactly as before.
        """
        with self._locked():
            if self._read_manifest() != self._entries:  # another process appended since we read
                self.reload()
            now = datetime.now(timezone.utc)
            table = self._validate(rows, cycle, source, now)
            seq = len(self._entries)
            self._remove_leftovers()
            entry = self._commit(table, seq, cycle, source, now)
        self._entries.append(entry)
        self._table = pa.concat_tables([self._table, table])
        self._keys |= _keys_of(table)
        log.info("label store %s: append %d, %d rows, cycle %d, source %s", self.path, seq, len(table),
                 cycle, source)
        return seq

    def _validate(self, rows, cycle: int, source: str, now: datetime) -> pa.Table:
        problems, records = normalize_rows(rows, cycle, source, self._index)
        problems += duplicate_problems(records, self._keys)
        if problems:
            shown = problems[:MAX_LISTED]
            more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
            raise LabelValidationError(
                f"label store {self.path}: append rejected, nothing was written; {len(problems)} "
                "problem(s):\n  " + "\n  ".join(shown) + more + "\nfix these rows and append again",
                problems,
            )
        columns = {name: [r[name] for r in records] for name in LABELS_SCHEMA.names if name != "created_at"}
        columns["created_at"] = [now] * len(records)
        return pa.Table.from_pydict(columns, schema=LABELS_SCHEMA)

    def _commit(self, table: pa.Table, seq: int, cycle: int, source: str, now: datetime) -> dict:
        """Write the part, then the manifest (the commit point); undo everything on OSError."""
        name = f"{PART_PREFIX}{seq:06d}{PART_SUFFIX}"
        entry = {"seq": seq, "file": name, "sha256": "", "rows": table.num_rows, "cycle": int(cycle),
                 "source": source, "created_at": now.isoformat(timespec="microseconds")}
        written: list[Path] = []
        try:
            entry["sha256"] = _write_atomic(self.path / name, lambda f: pq.write_table(table, f), written)
            manifest = json.dumps({"version": 1, "appends": self._entries + [entry]}, indent=1).encode()
            _write_atomic(self.path / MANIFEST, lambda f: f.write(manifest), [])  # nothing fails after
        except BaseException as e:
            # An OSError comes before the manifest rename, so the renamed part is still unlisted and goes
            # too. Anything else (KeyboardInterrupt) may come just after the commit: keep the part, an
            # unlisted one is ignored and removed by the next append. A kill needs no undo at all.
            undo = [_tmp_name(self.path / name), _tmp_name(self.path / MANIFEST)]
            for p in undo + (written if isinstance(e, OSError) else []):
                with contextlib.suppress(OSError):
                    p.unlink(missing_ok=True)
            if not isinstance(e, OSError):
                raise
            where = f", {e.filename}" if e.filename else ""
            raise LabelStoreWriteError(
                e.errno or errno.EIO,
                f"label store {self.path}: append {seq} ({table.num_rows} rows, cycle {cycle}) failed "
                f"and was rolled back, the store is unchanged: {e.strerror or e} ({type(e).__name__}{where})"
                "; free space or fix permissions and append again",
            ) from e
        _fsync_dir(self.path)
        return entry

    def _remove_leftovers(self) -> None:
        """Delete temporary files and unlisted parts left by interrupted appends (lock held)."""
        listed = {e["file"] for e in self._entries}
        for p in self.path.iterdir():
            name = p.name
            leftover = (name.startswith(".") and name.endswith(TMP_SUFFIX)) or (
                name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX) and name not in listed
            )
            if leftover:
                log.warning("label store %s: removing %s left by an interrupted append", self.path, name)
                with contextlib.suppress(OSError):
                    p.unlink()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the store's exclusive lock, waiting up to lock_timeout seconds."""
        try:
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise LabelStoreWriteError(
                e.errno or errno.EIO, f"label store {self.path}: cannot open the lock file: {e}"
            ) from e
        try:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LabelStoreError(
                            f"label store {self.path}: another process has held {self.path / LOCK} for "
                            f"{self.lock_timeout:g} s; only one writer may append at a time"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)  # closing releases the lock


# ---- file helpers ------------------------------------------------------------------------------------


def _keys_of(table: pa.Table) -> set[tuple[str, int]]:
    """The (video_id, frame) pairs of a table."""
    return set(zip(table["video_id"].to_pylist(), table["frame"].to_pylist(), strict=True))


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}{TMP_SUFFIX}")


def _write_atomic(path: Path, write: Callable[[BinaryIO], object], written: list[Path]) -> str:
    """Write a file under a temporary name, fsync it, rename it onto `path`.

    Args:
        path: the final name.
        write: writes the content into the open binary file.
        written: `path` is appended once the rename is done (for the caller's rollback).

    Returns:
        sha256 hex digest of the file as written.
    """
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()  # what is on disk is what gets checked later
    os.replace(tmp, path)
    written.append(path)
    return digest


def _fsync_dir(path: Path) -> None:
    """Make the renames durable. After the manifest rename the append is committed, so a failure here is
    logged rather than raised: the caller's append is visible and cannot be undone."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        log.warning("label store %s: fsync of the directory failed (%s); the append may not survive a "
                    "power loss", path, e)


def _upgrade(table: pa.Table) -> pa.Table:
    """A part written before `box_tracks` existed, with the column added empty (track identity unknown:
    pseudo-labels then pair actors by position, as they did when it was written)."""
    if "box_tracks" in table.schema.names or "box_labels" not in table.schema.names:
        return table
    empty = pa.array([[]] * table.num_rows, type=LABELS_SCHEMA.field("box_tracks").type)
    return table.add_column(table.schema.get_field_index("box_labels") + 1,
                            LABELS_SCHEMA.field("box_tracks"), empty)
