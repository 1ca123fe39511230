"""Hostile input files stay bounded: each is refused with a message, under a memory cap, quickly.

The files are generated here. Memory bounds are checked in a subprocess whose address space is capped
(resource.setrlimit) at what it uses after its imports plus 400 MB: a reader that built what the file
asks for would die of MemoryError there instead of printing the refusal.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pandas as pd
import pytest

from raylab.data import bounds, safe_pickle
from raylab.data.annotations import AnnotationError, restricted_load

CAP_MB = 400


def run_capped(code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run `code` in a new Python whose address space is capped at its size after imports + CAP_MB."""
    prologue = textwrap.dedent(f"""
        import resource
        import raylab.data.adapters, raylab.oracle_formats, raylab.eval.stad
        vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + {CAP_MB} * 2**20, resource.RLIM_INFINITY))
    """)
    return subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)


def shared_lists_pickle(depth: int = 26) -> bytes:
    """An ACT-shaped pickle whose one tube is a DAG of lists, each level holding the one below twice:
    ~30 objects in memory, 2**26 lists and 5 * 2**26 floats (3.5 GB as Python objects) to whoever
    walks it."""
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    for _ in range(depth):
        x = [x, x]
    gt = {"labels": ["a"], "nframes": {"v": 3}, "train_videos": [["v"]], "test_videos": [[]],
          "resolution": {"v": (32, 32)}, "gttubes": {"v": {0: [x]}}}
    return pickle.dumps(gt, protocol=2)


HOSTILE_PICKLES = {
    # REDUCE builtins.bytes(10**15): a petabyte from 40 bytes
    "bytes_of_a_size": b"cbuiltins\nbytes\n(I1000000000000000\ntR.",
    # an ndarray of 10**12 float64 through numpy's own _reconstruct
    "huge_array": b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I1000000000000\ntS'f8'\ntR.",
    # list() of one memoised 100,000-item list, 2,000 times: 200 million items from 200 KB
    "copied_list": b"\x80\x02cbuiltins\nlist\nq\x00]q\x01(" + b"K\x00" * 100_000 + b"e"
    + b"h\x00h\x01\x85R0" * 2000 + b"N.",
    # 100,000 nested lists (the unpickler is iterative; whoever walks the result recurses)
    "deep": b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_PICKLES))
def test_hostile_pickles_are_refused_with_a_message(tmp_path, name):
    path = tmp_path / f"{name}.pkl"
    path.write_bytes(HOSTILE_PICKLES[name])
    with pytest.raises(AnnotationError, match="refused"):
        restricted_load(path)


def test_shared_nested_lists_are_refused_under_a_memory_cap(tmp_path):
    path = tmp_path / "UCF101v2-GT.pkl"
    path.write_bytes(shared_lists_pickle())
    assert len(path.read_bytes()) < 5000
    out = run_capped(f"""
        from raylab.data.adapters import read_act
        from raylab.data.annotations import AnnotationError
        try:
            read_act({str(path)!r})
        except AnnotationError as e:
            print(e)
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "shared parts counted each time" in out.stdout and "Traceback" not in out.stderr


def test_every_hostile_pickle_is_refused_under_a_memory_cap(tmp_path):
    for name, data in HOSTILE_PICKLES.items():
        (tmp_path / f"{name}.pkl").write_bytes(data)
    out = run_capped(f"""
        from raylab.data.annotations import AnnotationError, restricted_load
        for name in {sorted(HOSTILE_PICKLES)!r}:
            try:
                restricted_load({str(tmp_path)!r} + "/" + name + ".pkl")
            except AnnotationError as e:
                print(name, "refused" in str(e))
    """)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == [w for name in sorted(HOSTILE_PICKLES) for w in (name, "True")]


def test_the_bounds_leave_real_annotation_pickles_alone(tmp_path):
    gt = {"labels": ["a", "b"], "nframes": {f"v{i}": 100 for i in range(500)},
          "gttubes": {f"v{i}": {0: [np.ones((100, 5), np.float32)]} for i in range(500)},
          "train_videos": [[f"v{i}" for i in range(400)]],
          "test_videos": [[f"v{i}" for i in range(400, 500)]],
          "resolution": {f"v{i}": (240, 320) for i in range(500)}}
    for protocol in (0, 2, 5):
        (tmp_path / "gt.pkl").write_bytes(pickle.dumps(gt, protocol=protocol))
        got = restricted_load(tmp_path / "gt.pkl")
        np.testing.assert_array_equal(got["gttubes"]["v7"][0][0], gt["gttubes"]["v7"][0][0])


def test_check_built_counts_shared_parts_each_time():
    x = list(range(1000))
    safe_pickle.check_built([x] * 1000)  # a million reached: within the bound
    with pytest.raises(safe_pickle.PickleRefused, match="objects"):
        safe_pickle.check_built([[x] * 1000] * 3)


def zip_bomb(path, megabytes: int) -> None:
    """A ZIP of one XML member of `megabytes` MB that compresses ~1000x."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open("annotations.xml", "w", force_zip64=True) as f:
            f.write(b"<annotations>")
            chunk = b"<x/>" * 2**18  # 1 MB
            for _ in range(megabytes):
                f.write(chunk)
            f.write(b"</annotations>")


def test_a_zip_that_decompresses_past_the_bound_is_refused_under_a_memory_cap(tmp_path):
    from raylab.oracle_formats import parse_annotations

    path = tmp_path / "export.zip"
    zip_bomb(path, bounds.MAX_INPUT_BYTES // 2**20 + 1)
    assert path.stat().st_size < bounds.MAX_INPUT_BYTES // 100
    with pytest.raises(AnnotationError, match="decompresses to 65 MiB; raylab reads at most 64 MiB"):
        parse_annotations(path, {})
    with zipfile.ZipFile(path) as z:  # a member that declares less than it holds is not read past that
        z.getinfo("annotations.xml").file_size = 100
        with pytest.raises(zipfile.BadZipFile, match="Bad CRC"):
            bounds.read_zip_member(z, "annotations.xml", limit=2**20)
    out = run_capped(f"""
        from pathlib import Path
        from raylab.data.annotations import AnnotationError
        from raylab.oracle_formats import parse_annotations
        try:
            parse_annotations(Path({str(path)!r}), {{}})
        except AnnotationError as e:
            print(e)
    """)
    assert out.returncode == 0 and "raylab reads at most 64 MiB" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("reader", ["labelstudio", "stad", "thumos14"])
def test_deeply_nested_json_is_refused_by_every_reader(tmp_path, reader):
    from raylab.data.adapters import read_activity_json
    from raylab.eval.stad import StadFormatError, evaluate_stad_file
    from raylab.oracle_formats import parse_annotations

    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    read, error = {"labelstudio": (lambda: parse_annotations(path, {}), AnnotationError),
                   "stad": (lambda: evaluate_stad_file(path), StadFormatError),
                   "thumos14": (lambda: read_activity_json(path, "thumos14"), AnnotationError)}[reader]
    with pytest.raises(error, match="nested more than about"):
        read()


@pytest.mark.parametrize("task,message", [
    ({"annotations": 5}, "'annotations' must be a list, got 5"),
    ({"annotations": [{"result": 7}]}, "an annotation's 'result' must be a list of regions, got 7"),
])
def test_label_studio_fields_of_the_wrong_type_are_problems(tmp_path, task, message):
    from raylab.oracle_formats import parse_annotations

    data = {"video_id": "v", "raylab_run_id": "r", "raylab_cycle": 0, "frames": [1]}
    path = tmp_path / "ls.json"
    path.write_text(json.dumps([{"id": 1, "data": data, **task}]))
    parsed = parse_annotations(path, {"v": (4, 8, 8)})
    assert [p.message for p in parsed.problems] == [f"task 1: {message}"]


def test_jhmdb_masks_of_an_escaping_video_name_are_never_opened(tmp_path, monkeypatch):
    import scipy.io

    from raylab.data import adapters

    outside = tmp_path / "outside" / "x"
    outside.mkdir(parents=True)
    scipy.io.savemat(outside / "puppet_mask.mat", {"part_mask": np.zeros((4, 4, 2), np.uint8)})
    opened = []
    monkeypatch.setattr(scipy.io, "loadmat", lambda p, *a, **k: opened.append(p))
    masks = tmp_path / "src" / "puppet_mask"
    masks.mkdir(parents=True)
    name = "../../outside/x"
    gt = adapters._box_frame([pd.DataFrame({"video_id": [name], "frame": [0], "actor": [0], "x1": [0.0],
                                            "y1": [0.0], "x2": [1.0], "y2": [1.0], "mask_rle": [None],
                                            "label": [0]})])
    source = adapters.Source("spatiotemporal", "JHMDB-GT.pkl", ["a"],
                             [adapters.VideoEntry(name, "train", 0, 2, 4, 4)], gt)
    assert (masks / name / "puppet_mask.mat").is_file()  # it is there to be opened
    assert adapters.attach_jhmdb_masks(source, masks) == 0 and opened == []
