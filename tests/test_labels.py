"""Tests of the sparse label store (raylab/data/labels.py): round trip, queries, validation, corruption,
write failures, and a writer killed with SIGKILL at random moments."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raylab.data import labels as labels_mod
from raylab.data.labels import (
    LABELS_SCHEMA,
    LabelStore,
    LabelStoreCorruptError,
    LabelStoreError,
    LabelStoreWriteError,
    LabelValidationError,
)
from raylab.data.rle import rle_encode

sys.path.insert(0, str(Path(__file__).parent))
import label_writer  # noqa: E402

log = logging.getLogger(__name__)

INDEX = pd.DataFrame(
    {"video_id": ["a", "b", "c"], "num_frames": [10, 20, 30], "height": [8, 8, 8], "width": [16, 16, 16]}
)


def _mask(height: int = 8, width: int = 16) -> list[int]:
    m = np.zeros((height, width), dtype=np.uint8)
    m[2:5, 3:9] = 1
    return rle_encode(m).tolist()


def _rows() -> list[dict]:
    """One row of every payload kind."""
    return [
        {"video_id": "a", "frame": 3, "cost": 2.0, "boxes": [[1, 2, 9, 6]], "box_labels": [4],
         "mask_rle": [_mask()]},
        {"video_id": "a", "frame": 0, "cost": 1.0, "boxes": [[0, 0, 4, 4], [5, 1, 15, 7]],
         "box_labels": [1, 2]},  # boxes only, no masks
        {"video_id": "b", "frame": 7, "cost": 1.0},  # annotated negative: no actor
        {"video_id": "c", "frame": -1, "cost": 6.0,
         "segments": [{"t_start": 0.5, "t_end": 1.25, "label": 3}, (2.0, 3.0, 1)]},  # whole video
    ]


def _listing(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.name != ".lock"}


@pytest.fixture
def store(tmp_path) -> LabelStore:
    return LabelStore(tmp_path / "labels", index=INDEX)


# ---- round trip and queries ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["list", "pandas", "arrow"])
def test_round_trip_all_payload_kinds(tmp_path, kind):
    rows = _rows()
    rows[3]["segments"] = [{"t_start": 0.5, "t_end": 1.25, "label": 3}, {"t_start": 2.0, "t_end": 3.0,
                                                                         "label": 1}]
    df = pd.DataFrame(rows)
    given = {"list": rows, "pandas": df, "arrow": pa.Table.from_pandas(df, preserve_index=False)}[kind]
    seq = LabelStore(tmp_path, index=INDEX).append(given, cycle=0, source="init")
    assert seq == 0

    table = LabelStore(tmp_path, index=INDEX).table()
    assert table.schema.equals(LABELS_SCHEMA)
    got = table.to_pylist()
    assert [(r["video_id"], r["frame"]) for r in got] == [("a", 3), ("a", 0), ("b", 7), ("c", -1)]
    assert got[0]["boxes"] == [[1, 2, 9, 6]] and got[0]["box_labels"] == [4]
    assert got[0]["mask_rle"] == [_mask()]
    assert got[1]["boxes"] == [[0, 0, 4, 4], [5, 1, 15, 7]] and got[1]["mask_rle"] == []
    assert got[2]["boxes"] == [] and got[2]["box_labels"] == [] and got[2]["segments"] == []
    assert got[3]["segments"] == [{"t_start": 0.5, "t_end": 1.25, "label": 3},
                                  {"t_start": 2.0, "t_end": 3.0, "label": 1}]
    assert {r["cycle"] for r in got} == {0} and {r["source"] for r in got} == {"init"}
    assert len({r["created_at"] for r in got}) == 1 and got[0]["created_at"].tzinfo is not None


def test_queries(store):
    assert len(store) == 0 and store.cost() == 0.0 and store.cycles() == [] and store.labelled_frames() == {}
    store.append(_rows(), cycle=0, source="init")
    store.append([{"video_id": "a", "frame": 5, "cost": 3.0}, {"video_id": "b", "frame": 2, "cost": 0.5}],
                 cycle=1, source="oracle")
    store = LabelStore(store.path, index=INDEX)  # everything below holds after reopening

    assert len(store) == 6
    frames = store.labelled_frames()
    assert list(frames) == ["a", "b", "c"]
    np.testing.assert_array_equal(frames["a"], [0, 3, 5])
    np.testing.assert_array_equal(store.labelled_frames("b"), [2, 7])
    np.testing.assert_array_equal(store.labelled_frames("c"), [-1])
    assert store.labelled_frames("zzz").size == 0
    assert store.is_labelled("a", 3) and not store.is_labelled("a", 4)
    assert store.is_labelled("c", 17)  # covered by the whole-video row
    assert store.labelled_videos() == ["a", "b", "c"]
    assert store.cost() == 13.5 and store.cost(0) == 10.0 and store.cost_per_cycle() == {0: 10.0, 1: 3.5}
    assert store.cycles() == [0, 1]
    # 3 frames of a, 2 of b, all 30 of c (whole video) over 10 + 20 + 30 frames
    assert store.labelled_fraction() == pytest.approx(35 / 60)
    assert [(e["seq"], e["rows"], e["cycle"], e["source"]) for e in store.appends] == [
        (0, 4, 0, "init"), (1, 2, 1, "oracle")]
    assert [e["file"] for e in store.appends] == ["part-000000.parquet", "part-000001.parquet"]


def test_labelled_fraction_without_index(tmp_path):
    store = LabelStore(tmp_path)
    store.append([{"video_id": "x", "frame": f, "cost": 1.0} for f in range(4)], cycle=0, source="init")
    assert store.labelled_fraction(total_frames=16) == 0.25
    with pytest.raises(ValueError, match="total_frames"):
        store.labelled_fraction()
    store.append([{"video_id": "y", "frame": -1, "cost": 1.0}], cycle=0, source="init")
    with pytest.raises(ValueError, match="whole-video"):
        store.labelled_fraction(total_frames=16)


def test_second_instance_sees_appends_of_the_first(tmp_path):
    first, second = LabelStore(tmp_path), LabelStore(tmp_path)
    first.append([{"video_id": "a", "frame": 1, "cost": 1.0}], cycle=0, source="init")
    # the second instance re-reads the manifest under the lock, so the duplicate is caught
    with pytest.raises(LabelValidationError, match="already annotated"):
        second.append([{"video_id": "a", "frame": 1, "cost": 1.0}], cycle=0, source="human")
    assert second.append([{"video_id": "a", "frame": 2, "cost": 1.0}], cycle=0, source="human") == 1
    assert len(second) == 2


# ---- validation ------------------------------------------------------------------------------------

BAD_ROWS = [
    ({"boxes": [[5, 1, 2, 4]], "box_labels": [0]}, "x1 < x2"),
    ({"boxes": [[1, 1, float("nan"), 4]], "box_labels": [0]}, "4 finite numbers"),
    ({"boxes": [[1, 1, 4]], "box_labels": [0]}, "4 finite numbers"),
    ({"boxes": [[1, 1, 4, 4]], "box_labels": []}, "one integer >= 0 per box"),
    ({"boxes": [[1, 1, 4, 4]], "box_labels": [0], "mask_rle": [[1], [2]]}, "one RLE"),
    ({"boxes": [[1, 1, 40, 4]], "box_labels": [0]}, "outside the 16x8 frame"),
    ({"boxes": [[1, 1, 4, 4]], "box_labels": [0], "mask_rle": [[5, 3]]}, "covers 8 pixels"),
    ({"frame": 10}, "out of range: the video has 10 frames"),
    ({"video_id": "nope"}, "not in the dataset index"),
    ({"frame": -2}, "frame must be an integer"),
    ({"cost": -1.0}, "cost must be"),
    ({"segments": [(0.0, 1.0, 0)]}, "segments belong on a whole-video row"),
]


@pytest.mark.parametrize("change, message", BAD_ROWS)
def test_bad_row_is_rejected_naming_video_and_frame(store, change, message):
    store.append([{"video_id": "a", "frame": 1, "cost": 1.0}], cycle=0, source="init")
    before = _listing(store.path)
    row = {"video_id": "a", "frame": 4, "cost": 1.0, **change}
    with pytest.raises(LabelValidationError, match=message) as info:
        store.append([{"video_id": "b", "frame": 0, "cost": 1.0}, row], cycle=1, source="oracle")
    text = str(info.value)
    assert str(store.path) in text and "nothing was written" in text
    assert f"video {row['video_id']!r} frame {row['frame']}" in text
    assert _listing(store.path) == before and len(store) == 1
    assert len(LabelStore(store.path)) == 1


def test_duplicates_in_the_append_and_against_the_store(store):
    store.append([{"video_id": "a", "frame": 1, "cost": 1.0}], cycle=0, source="init")
    rows = [{"video_id": "b", "frame": 2, "cost": 1.0}, {"video_id": "b", "frame": 2, "cost": 1.0},
            {"video_id": "a", "frame": 1, "cost": 1.0}]
    with pytest.raises(LabelValidationError) as info:
        store.append(rows, cycle=1, source="oracle")
    assert info.value.problems == ["video 'b' frame 2: appears twice in this append",
                                   "video 'a' frame 1: already annotated in the store"]
    assert len(LabelStore(store.path)) == 1


def test_all_problems_are_listed(store):
    rows = [{"video_id": "a", "frame": f, "cost": 1.0, "boxes": [[3, 3, 1, 1]], "box_labels": [0]}
            for f in range(5)]
    with pytest.raises(LabelValidationError) as info:
        store.append(rows, cycle=0, source="init")
    assert [p.split(":")[0] for p in info.value.problems] == [f"video 'a' frame {f}" for f in range(5)]


@pytest.mark.parametrize("rows, cycle, source, message", [
    ([{"video_id": "a", "frame": 1, "cost": 1.0}], 0, "robot", "source must be one of"),
    ([{"video_id": "a", "frame": 1, "cost": 1.0}], -1, "init", "cycle must be"),
    ([{"video_id": "a", "frame": 1}], 0, "init", r"missing required column\(s\) \['cost'\]"),
    ([{"video_id": "a", "frame": 1, "cost": 1.0, "colour": 2}], 0, "init", "unknown column"),
    ([{"video_id": "a", "frame": 1, "cost": 1.0, "cycle": 3}], 0, "init", "differs from the argument"),
    ([], 0, "init", "no rows"),
])
def test_bad_arguments(store, rows, cycle, source, message):
    with pytest.raises(LabelValidationError, match=message):
        store.append(rows, cycle=cycle, source=source)
    assert _listing(store.path) == {}


# ---- corruption, leftovers, write failures ---------------------------------------------------------


def test_flipped_byte_is_a_checksum_error(store):
    store.append(_rows(), cycle=0, source="init")
    store.append([{"video_id": "a", "frame": 9, "cost": 1.0}], cycle=1, source="oracle")
    part = store.path / "part-000000.parquet"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF
    part.write_bytes(bytes(data))
    with pytest.raises(LabelStoreCorruptError, match="checksum mismatch for .*part-000000.parquet"):
        LabelStore(store.path)


def test_missing_part_and_bad_manifest(store):
    store.append(_rows(), cycle=0, source="init")
    (store.path / "part-000000.parquet").unlink()
    with pytest.raises(LabelStoreCorruptError, match="part-000000.parquet .* missing"):
        LabelStore(store.path)
    (store.path / "manifest.json").write_text("{not json")
    with pytest.raises(LabelStoreCorruptError, match="not a valid manifest"):
        LabelStore(store.path)


def test_leftovers_are_ignored_then_removed(store):
    store.append(_rows(), cycle=0, source="init")
    orphan = store.path / "part-000001.parquet"  # renamed, but the kill came before the manifest
    orphan.write_bytes(b"half a parquet file")
    tmp_part = store.path / ".part-000001.parquet.tmp"
    tmp_part.write_bytes(b"garbage")
    tmp_manifest = store.path / ".manifest.json.tmp"
    tmp_manifest.write_text("{")
    reopened = LabelStore(store.path, index=INDEX)
    assert len(reopened) == 4 and len(reopened.appends) == 1
    reopened.append([{"video_id": "a", "frame": 9, "cost": 1.0}], cycle=1, source="oracle")
    assert not tmp_part.exists() and not tmp_manifest.exists()
    assert sorted(p.name for p in store.path.glob("part-*")) == ["part-000000.parquet", "part-000001.parquet"]
    assert len(LabelStore(store.path)) == 5


def _fail_on_call(monkeypatch, name: str, call: int):
    """Make os.<name> raise ENOSPC on its `call`-th use (1-based)."""
    real = getattr(os, name)
    calls = []

    def failing(*args, **kwargs):
        calls.append(args)
        if len(calls) == call:
            raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(labels_mod.os, name, failing)


@pytest.mark.parametrize("name, call", [("replace", 1), ("replace", 2), ("fsync", 1), ("fsync", 2)])
def test_disk_full_during_append_leaves_the_store_as_before(store, monkeypatch, name, call):
    store.append(_rows(), cycle=0, source="init")
    before = _listing(store.path)
    _fail_on_call(monkeypatch, name, call)
    with pytest.raises(LabelStoreWriteError) as info:
        store.append([{"video_id": "a", "frame": 9, "cost": 1.0}], cycle=1, source="oracle")
    monkeypatch.undo()
    err = info.value
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC
    assert str(store.path) in str(err) and "No space left on device" in str(err)
    assert "rolled back, the store is unchanged" in str(err)
    assert _listing(store.path) == before  # no temp file, no orphan part, same manifest
    assert len(store) == 4 and len(LabelStore(store.path)) == 4
    assert store.append([{"video_id": "a", "frame": 9, "cost": 1.0}], cycle=1, source="oracle") == 1


def test_parquet_writer_failure(store, monkeypatch):
    """pyarrow fails halfway through encoding into the temporary file: the file is removed."""
    def full(table, where, **kwargs):
        where.write(b"PAR1 half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(labels_mod.pq, "write_table", full)
    with pytest.raises(LabelStoreWriteError, match="append 0 .* rolled back.*No space left on device"):
        store.append(_rows(), cycle=0, source="init")
    assert _listing(store.path) == {}


def test_second_writer_waits_then_fails(store):
    fd = os.open(store.path / ".lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # flock locks conflict between open files, even in one process
        store.lock_timeout = 0.2
        with pytest.raises(LabelStoreError, match="only one writer"):
            store.append(_rows(), cycle=0, source="init")
    finally:
        os.close(fd)
    assert store.append(_rows(), cycle=0, source="init") == 0


# ---- the kill test -------------------------------------------------------------------------------

KILLS = 40
WRITER = Path(label_writer.__file__)


def _run_writer(proc: subprocess.Popen, delay: float) -> list[int]:
    """Fork a writer, SIGKILL it after `delay` seconds once it is ready; return the k it printed."""
    proc.stdin.write("go\n")
    proc.stdin.flush()
    lines = [proc.stdout.readline().strip() for _ in range(2)]  # "pid N" and "ready", in either order
    pid = next(int(line.split()[1]) for line in lines if line.startswith("pid"))
    assert "ready" in lines, lines
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    printed = []
    # the writer's lines all precede "reaped": it printed them before it died, and died before the reap
    for line in iter(proc.stdout.readline, f"reaped {pid}\n"):
        assert line.startswith("committed"), line
        printed.append(int(line.split()[1]))
    return printed


def _leftovers(path: Path, listed: set[str]) -> list[str]:
    return [p.name for p in path.iterdir()
            if p.name.endswith(".tmp") or (p.name.startswith("part-") and p.name not in listed)]


def _check_appends(store: LabelStore, start: int) -> None:
    """Appends start.. of the store hold exactly batch(k) (earlier ones are checked by checksum)."""
    offsets = np.cumsum([0] + [e["rows"] for e in store.appends])
    table = store.table()
    for k in range(start, len(store.appends)):
        entry = store.appends[k]
        assert (entry["seq"], entry["cycle"], entry["source"]) == (k, label_writer.batch_cycle(k), "oracle")
        got = table.slice(offsets[k], entry["rows"]).select(["video_id", "frame", "cost", "boxes",
                                                              "box_labels", "mask_rle"]).to_pylist()
        want = pd.DataFrame(label_writer.batch(k))
        assert [r["frame"] for r in got] == want["frame"].tolist()
        assert [r["video_id"] for r in got] == want["video_id"].tolist()
        assert [r["cost"] for r in got] == want["cost"].tolist()
        for j, r in enumerate(got):
            assert r["boxes"] == (want["boxes"][j] if j % 4 else [])
            assert r["mask_rle"] == (want["mask_rle"][j] if j % 4 else [])


@pytest.mark.slow
def test_sigkill_at_random_moments_never_breaks_the_store(tmp_path):
    path = tmp_path / "labels"
    rng = random.Random(20240611)
    committed, checked, prev_entries = 0, 0, []
    mid_append = after_commit_before_print = 0
    writer = subprocess.Popen([sys.executable, str(WRITER), str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    started = time.monotonic()
    for _ in range(KILLS):
        # up to 0.25 s: on a slow 2-core machine under the full suite, 0.15 s let only 8 of 40 rounds commit
        printed = _run_writer(writer, rng.uniform(0.0, 0.25))
        if printed:
            assert printed == list(range(committed, printed[-1] + 1))
            committed = printed[-1] + 1

        store = LabelStore(path)  # must open: checksums of every listed part verified
        entries = store.appends
        assert entries[: len(prev_entries)] == prev_entries  # committed appends never change
        assert len(entries) in (committed, committed + 1)
        if len(entries) == committed + 1:
            after_commit_before_print += 1
            committed += 1
        if _leftovers(path, {e["file"] for e in entries}):
            mid_append += 1
        _check_appends(store, checked)
        checked, prev_entries = len(entries), entries
    writer.stdin.close()
    assert writer.wait(timeout=10) == 0
    log.warning("kill test: %d kills in %.1f s, %d appends; %d landed mid-append (leftover files), "
                "%d between commit and print", KILLS, time.monotonic() - started, committed, mid_append,
                after_commit_before_print)
    assert committed >= KILLS // 4, "the writer made too little progress between kills"
    # each append's file write is a large share of its time (long masks), so with 40 kills at random
    # moments some land inside it (observed 10-20 of 40); none would mean the test missed its point
    assert mid_append > 0, "no kill landed inside an append's write"
