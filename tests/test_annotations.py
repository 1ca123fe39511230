"""raylab convert and the canonical ground truth: each adapter, validation, quarantine, the unpickler."""

from __future__ import annotations

import copy
import json
import os
import pickle
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.io

from raylab.data import schema
from raylab.data.annotations import (
    AnnotationError,
    Problem,
    load_dataset,
    restricted_load,
    validate_boxes,
    validate_segments,
)
from raylab.data.convert import convert
from raylab.data.rle import rle_decode
from raylab.data.video import write_video

H, W, N = 64, 96, 12  # tiny videos: 12 frames of 64x96 (decord mis-strides a few small widths, not 96)


def blob_frames(n: int = N, h: int = H, w: int = W, seed: int = 0):
    """A square moving left to right over noise-free grey, [n] x uint8 [h, w, 3]."""
    for t in range(n):
        frame = np.full((h, w, 3), 40 + seed * 10, np.uint8)
        x = 4 + 3 * t
        frame[20:36, x : x + 16] = 220
        yield frame


def make_video(path, n: int = N, fps: float = 10.0, seed: int = 0):
    write_video(path, blob_frames(n, seed=seed), fps=fps)
    return path


def tube(first: int, last: int, box=(10.0, 12.0, 40.0, 50.0)) -> np.ndarray:
    """ACT tube rows (frame 1-based, x1, y1, x2, y2), float32 [N, 5]."""
    frames = np.arange(first, last + 1, dtype=np.float32)
    return np.column_stack([frames, np.tile(np.asarray(box, np.float32), (frames.size, 1))]).astype(
        np.float32
    )


UCF_VIDEOS = {
    "Basketball/v_Basketball_g01_c01": (0, [tube(1, 6), tube(3, 12, (50, 5, 90, 60))]),
    "Fencing/v_Fencing_g02_c01": (1, [tube(2, 10)]),
    "Fencing/v_Fencing_g03_c02": (1, [tube(1, 12)]),
}


def act_dict(videos=UCF_VIDEOS, labels=("Basketball", "Fencing"), splits=1) -> dict:
    videos, names = copy.deepcopy(videos), list(videos)
    return {
        "labels": list(labels),
        "nframes": {v: N for v in names},
        "resolution": {v: (H, W) for v in names},
        "train_videos": [names[:2] for _ in range(splits)],
        "test_videos": [names[2:] for _ in range(splits)],
        "gttubes": {v: {lab: tubes} for v, (lab, tubes) in videos.items()},
    }


def write_act(src, data: dict, name: str = "UCF101v2-GT.pkl", make_videos: bool = True):
    src.mkdir(parents=True, exist_ok=True)
    with open(src / name, "wb") as f:
        pickle.dump(data, f, protocol=2)  # as the Python 2 originals
    if make_videos:
        for i, v in enumerate(data["nframes"]):
            make_video(src / "videos" / f"{v}.mp4", seed=i)
    return src


def problems_of(excinfo) -> list[Problem]:
    return excinfo.value.problems


# ------------------------------------------------------------------------------------------ ACT / UCF


def test_ucf_converts_and_tables_match_the_pickle(tmp_path):
    src = write_act(tmp_path / "ucf", act_dict())
    out = tmp_path / "out"
    summary = convert("ucf101-24", src, out)
    assert summary["videos"] == 3 and summary["quarantined"] == 0 and summary["classes"] == 2
    assert summary["rows"] == 6 + 10 + 9 + 12

    meta, index, gt = load_dataset(out)
    assert meta["kind"] == "spatiotemporal" and meta["classes"] == ["Basketball", "Fencing"]
    assert index["video_id"].tolist() == list(UCF_VIDEOS)
    assert index["split"].tolist() == ["train", "train", "test"]
    assert index["label"].tolist() == [0, 1, 1]
    assert (index["num_frames"] == N).all() and (index["height"] == H).all() and (index["width"] == W).all()
    assert os.path.isabs(index["path"][0]) and index["path"][0].endswith("v_Basketball_g01_c01.mp4")

    raw = pd.read_parquet(out / schema.INDEX_FILE)
    assert raw["path"][0] == "Basketball/v_Basketball_g01_c01.mp4"  # relative to video_root
    assert meta["video_root"] == str((src / "videos").absolute())

    bb = gt[gt["video_id"] == "Basketball/v_Basketball_g01_c01"].sort_values(["actor", "frame"])
    a1 = bb[bb["actor"] == 1]
    assert a1["frame"].tolist() == list(range(2, 12))  # 1-based 3..12 -> 0-based 2..11
    np.testing.assert_array_equal(a1[["x1", "y1", "x2", "y2"]].to_numpy()[0], [50, 5, 90, 60])
    assert (bb["label"] == 0).all() and gt["mask_rle"].isna().all()
    assert len(pd.read_parquet(out / schema.QUARANTINE_FILE)) == 0


def test_bad_act_input_lists_every_problem_and_writes_nothing(tmp_path):
    data = act_dict()
    tubes = data["gttubes"]
    tubes["Basketball/v_Basketball_g01_c01"][0][0] = tube(10, 13)  # frame 13 > nframes 12
    tubes["Fencing/v_Fencing_g02_c01"][1] = [tube(2, 4, (10, 10, 120, 40))]  # x2 120 > width 96
    tubes["Fencing/v_Fencing_g03_c02"] = {7: [tube(1, 2)]}  # class 7 of 2
    data["train_videos"][0].append("Ghost/v_ghost")  # in a split, not in gttubes / nframes
    data["test_videos"][0].append("../../etc/passwd")
    for k in ("gttubes", "nframes", "resolution"):
        data[k]["../../etc/passwd"] = data[k]["Fencing/v_Fencing_g02_c01"]
    src = write_act(tmp_path / "ucf", data)
    os.remove(src / "videos" / "Fencing" / "v_Fencing_g03_c02.mp4")
    out = tmp_path / "out"

    with pytest.raises(AnnotationError) as e:
        convert("ucf101-24", src, out)
    text = str(e.value)
    by = {(p.video, p.frame): p.message for p in problems_of(e)}
    pkl = str(src / "UCF101v2-GT.pkl")
    assert (
        f"{pkl}: video 'Basketball/v_Basketball_g01_c01' frame 13: frame outside the video (12 frames)"
        in text
    )
    assert "outside the 96x64 frame" in by[("Fencing/v_Fencing_g02_c01", 2)]
    assert [p.frame for p in problems_of(e) if "unknown class index 7 (actor 0)" in p.message] == [1]
    assert "missing from gttubes, nframes, resolution" in by[("Ghost/v_ghost", None)]
    assert "escapes the dataset root" in by[("../../etc/passwd", None)]
    assert "video file not found" in by[("Fencing/v_Fencing_g03_c02", None)]
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_resolution_mismatch_with_the_video_file_is_a_problem(tmp_path):
    data = act_dict()
    data["resolution"]["Fencing/v_Fencing_g02_c01"] = (240, 320)
    src = write_act(tmp_path / "ucf", data)
    with pytest.raises(
        AnnotationError, match=r"the video is 64x96 \(HxW\) but the annotation's resolution is 240x320"
    ):
        convert("ucf101-24", src, tmp_path / "out")


def test_corrupt_truncated_and_empty_videos_are_quarantined(tmp_path):
    videos = dict(UCF_VIDEOS)
    videos |= {f"Fencing/v_Fencing_bad_c0{i}": (1, [tube(1, 3)]) for i in range(3)}
    src = write_act(tmp_path / "ucf", act_dict(videos))
    vdir = src / "videos" / "Fencing"
    (vdir / "v_Fencing_bad_c00.mp4").write_bytes(os.urandom(4096))  # garbage
    good = (vdir / "v_Fencing_g02_c01.mp4").read_bytes()
    (vdir / "v_Fencing_bad_c01.mp4").write_bytes(good[: len(good) // 2])  # truncated
    (vdir / "v_Fencing_bad_c02.mp4").write_bytes(b"")  # empty
    out = tmp_path / "out"

    summary = convert("ucf101-24", src, out)
    assert summary["videos"] == 3 and summary["quarantined"] == 3
    q = pd.read_parquet(out / schema.QUARANTINE_FILE).set_index("video_id")
    assert sorted(q.index) == [f"Fencing/v_Fencing_bad_c0{i}" for i in range(3)]
    assert "empty" in q.loc["Fencing/v_Fencing_bad_c02", "reason"]
    assert all(q["reason"].str.len() > 0)
    _, index, gt = load_dataset(out)
    assert "Fencing/v_Fencing_bad_c00" not in set(gt["video_id"]) and len(index) == 3


def test_existing_output_is_never_overwritten(tmp_path):
    src = write_act(tmp_path / "ucf", act_dict())
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(AnnotationError, match="already exists and is not empty"):
        convert("ucf101-24", src, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "precious"


# ------------------------------------------------------------------------------------ J-HMDB + masks


JHMDB_VIDEOS = {
    "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0": (0, [tube(1, N, (20, 10, 60, 50))]),
    "wave/Wave_and_say_hi_wave_u_cm_np1_fr_med_0": (1, [tube(1, N, (30, 5, 70, 40))]),
}


def puppet_mask(box, seed: int) -> np.ndarray:
    """[H, W, N] 0/1 masks: the box, minus a frame-dependent corner so that frames differ."""
    x1, y1, x2, y2 = (int(v) for v in box)
    m = np.zeros((H, W, N), np.uint8)
    m[y1:y2, x1:x2, :] = 1
    for t in range(N):
        m[y1 : y1 + t + seed, x1 : x1 + 3, t] = 0
    return m


def write_jhmdb(tmp_path, mask_shape_ok: bool = True):
    data = act_dict(JHMDB_VIDEOS, labels=("brush_hair", "wave"), splits=3)
    data["train_videos"] = [list(JHMDB_VIDEOS)[:1], list(JHMDB_VIDEOS)[1:], list(JHMDB_VIDEOS)[:1]]
    data["test_videos"] = [list(JHMDB_VIDEOS)[1:], list(JHMDB_VIDEOS)[:1], list(JHMDB_VIDEOS)[1:]]
    src = write_act(tmp_path / "jhmdb", data, name="JHMDB-GT.pkl")
    masks = {}
    for i, (v, (_, tubes)) in enumerate(JHMDB_VIDEOS.items()):
        masks[v] = puppet_mask(tubes[0][0, 1:], seed=i)
        saved = masks[v] if mask_shape_ok or i else masks[v][:, :-8]
        (src / "puppet_mask" / v).mkdir(parents=True)
        scipy.io.savemat(src / "puppet_mask" / v / "puppet_mask.mat", {"part_mask": saved})
    return src, masks


def test_jhmdb_masks_decode_to_the_puppet_masks(tmp_path):
    src, masks = write_jhmdb(tmp_path)
    out = tmp_path / "out"
    convert("jhmdb", src, out, split=1)
    _, index, gt = load_dataset(out)
    assert dict(zip(index["video_id"], index["split"], strict=True)) == {
        list(JHMDB_VIDEOS)[0]: "test",
        list(JHMDB_VIDEOS)[1]: "train",
    }
    assert len(gt) == 2 * N and gt["mask_rle"].notna().all()
    for r in gt.itertuples():
        np.testing.assert_array_equal(rle_decode(r.mask_rle, H, W), masks[r.video_id][:, :, r.frame])


def test_jhmdb_bad_mask_shape_and_missing_split(tmp_path):
    src, _ = write_jhmdb(tmp_path, mask_shape_ok=False)
    with pytest.raises(AnnotationError) as e:
        convert("jhmdb", src, tmp_path / "out")
    [p] = problems_of(e)
    assert p.file.endswith("puppet_mask.mat") and p.video == list(JHMDB_VIDEOS)[0]
    assert "does not match the video resolution 64x96" in p.message
    with pytest.raises(AnnotationError, match="split 3 does not exist: the file has splits 0..2"):
        convert("jhmdb", src, tmp_path / "out", split=3)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- THUMOS / ActivityNet


def write_json(src, database: dict, name: str):
    src.mkdir(parents=True, exist_ok=True)
    (src / name).write_text(json.dumps({"version": "x", "database": database}))
    return src


def test_thumos_converts_segments(tmp_path):
    src = tmp_path / "thumos"
    db = {
        "video_validation_0000051": {"subset": "validation", "duration": 1.2, "annotations": [
            {"segment": [0.1, 0.5], "label": "LongJump"}, {"segment": [0.6, 1.1], "label": "LongJump"}]},
        "video_test_0000004": {"subset": "test", "duration": 1.2, "annotations": [
            {"segment": [0.2, 0.9], "label": "CliffDiving"}, {"segment": [0.3, 1.5], "label": "LongJump"}]},
    }  # fmt: skip
    write_json(src, db, "thumos14.json")
    for i, v in enumerate(db):
        make_video(src / "videos" / f"{v}.mp4", seed=i)
    out = tmp_path / "out"
    summary = convert("thumos14", src, out)
    assert summary == summary | {
        "kind": "temporal",
        "videos": 2,
        "train": 1,
        "test": 1,
        "classes": 2,
        "rows": 4,
    }
    meta, index, gt = load_dataset(out)
    assert meta["classes"] == ["CliffDiving", "LongJump"]
    assert index.set_index("video_id")["label"].to_dict() == {
        "video_validation_0000051": 1,
        "video_test_0000004": -1,
    }
    assert index.set_index("video_id")["split"].to_dict()["video_validation_0000051"] == "train"
    rows = gt.sort_values(["video_id", "t_start"])[["video_id", "t_start", "t_end", "label"]]
    # 1.5 s ends within the 1 s tolerance of the 1.2 s video and is clipped to its end
    assert rows.values.tolist() == [
        ["video_test_0000004", 0.2, 0.9, 0], ["video_test_0000004", 0.3, 1.2, 1],
        ["video_validation_0000051", 0.1, 0.5, 1], ["video_validation_0000051", 0.6, 1.1, 1],
    ]  # fmt: skip


def test_activitynet_subsets_and_v_prefix(tmp_path):
    src = tmp_path / "anet"
    db = {
        "abc123": {
            "subset": "training",
            "duration": 1.2,
            "annotations": [{"segment": [0.0, 1.0], "label": "Run"}],
        },
        "def456": {
            "subset": "validation",
            "duration": 1.2,
            "annotations": [{"segment": [0.5, 1.1], "label": "Swim"}],
        },
        "zzz999": {"subset": "testing", "duration": 1.2, "annotations": []},
    }
    write_json(src, db, "activity_net.v1-3.min.json")
    make_video(src / "videos" / "v_abc123.mp4")
    make_video(src / "videos" / "def456.mp4", seed=1)
    out = tmp_path / "out"
    convert("activitynet", src, out)
    _, index, gt = load_dataset(out)
    assert index[["video_id", "split", "label"]].values.tolist() == [
        ["v_abc123", "train", 0],
        ["def456", "test", 1],
    ]
    assert sorted(gt["video_id"]) == ["def456", "v_abc123"]


def test_bad_segments_are_all_reported(tmp_path):
    src = tmp_path / "anet"
    db = {
        "a": {"subset": "training", "duration": 1.2, "annotations": [
            {"segment": [0.8, 0.4], "label": "Run"}, {"segment": [-1.0, 0.4], "label": "Run"},
            {"segment": [0.2, 9.0], "label": "Run"}, {"segment": [0.2], "label": "Run"}]},
        "b": {"subset": "validation", "duration": 1.2, "annotations": [{"segment": [0, 1], "label": "Run"}]},
        "/abs/c": {"subset": "validation", "duration": "long", "annotations": []},
    }  # fmt: skip
    write_json(src, db, "activity_net.v1-3.min.json")
    make_video(src / "videos" / "a.mp4")
    out = tmp_path / "out"
    with pytest.raises(AnnotationError) as e:
        convert("activitynet", src, out)
    msgs = [f"{p.video}|{p.message}" for p in problems_of(e)]
    expected_starts = (
        "a|segment [0.8, 0.4] s is empty",
        "a|segment [-1, 0.4] s starts before 0",
        "a|segment [0.2, 9] s ends after the video (1.2 s)",
        'a|annotation 3 needs "segment"',
        "b|video file not found",
        "/abs/c|absolute path",
        "/abs/c|duration must be a positive",
    )
    for expected in expected_starts:
        assert any(m.startswith(expected) for m in msgs), (expected, msgs)
    assert len(msgs) == 7 and not out.exists()


# ------------------------------------------------------------------------------- unpickler and misc


class Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_malicious_pickle_is_refused_and_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "UCF101v2-GT.pkl"
    path.write_bytes(pickle.dumps({"labels": ["a"], "x": Evil()}, protocol=2))
    with pytest.raises(AnnotationError, match=r"refused to load (posix|os)\.system from UCF101v2-GT\.pkl"):
        restricted_load(path)
    with pytest.raises(AnnotationError, match="only plain containers and numpy arrays"):
        convert("ucf101-24", tmp_path, tmp_path / "out", videos=tmp_path)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()


def test_restricted_load_reads_numpy_in_every_protocol(tmp_path):
    data = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.int64(7), "t": (1, 2), "s": {"x"}}
    for proto in (0, 2, 4, 5):
        (tmp_path / "p.pkl").write_bytes(pickle.dumps(data, protocol=proto))
        got = restricted_load(tmp_path / "p.pkl")
        np.testing.assert_array_equal(got["a"], data["a"])
        assert got["n"] == 7 and got["t"] == (1, 2) and got["s"] == {"x"}
    (tmp_path / "p.pkl").write_bytes(b"\x80\x02}q\x00")  # truncated
    with pytest.raises(AnnotationError, match="not a readable pickle"):
        restricted_load(tmp_path / "p.pkl")


def test_problem_text_names_file_video_and_frame():
    assert str(Problem("gt.pkl", "v", 12, "bad")) == "gt.pkl: video 'v' frame 12: bad"
    assert str(Problem("gt.pkl", None, None, "bad")) == "gt.pkl: bad"
    err = AnnotationError([Problem("f", "a", 1, "x"), Problem("f", "b", None, "y")])
    assert str(err).splitlines()[1:] == ["  f: video 'a' frame 1: x", "  f: video 'b': y"]


def test_validators_on_canonical_tables():
    videos = pd.DataFrame({"video_id": ["v"], "num_frames": [4], "height": [10], "width": [20]})
    gt = pd.DataFrame({"video_id": ["v", "v", "w"], "frame": [0, 4, 0], "actor": [0, 0, 0],
                       "x1": [0.0, 0.0, 0.0], "y1": [0.0, 0.0, 0.0], "x2": [20.5, 5.0, 1.0],
                       "y2": [10.0, 5.0, 1.0], "label": [0, 3, 0]})  # fmt: skip
    msgs = sorted(str(p) for p in validate_boxes(gt, videos, num_classes=2, file="f"))
    assert msgs == ["f: video 'v' frame 4: frame outside the video (4 frames)",
                    "f: video 'v' frame 4: unknown class index 3 (actor 0): there are 2 classes",
                    "f: video 'w': not in the dataset index"]  # fmt: skip
    segs = pd.DataFrame({"video_id": ["v"], "t_start": [1.0], "t_end": [1.0], "label": [0]})
    [p] = validate_segments(segs, {"v": 2.0}, 1, "f")
    assert p.message == "segment [1, 1] s is empty: needs t_start < t_end"


def test_load_dataset_reports_a_missing_video(tmp_path):
    src = write_act(tmp_path / "ucf", act_dict())
    convert("ucf101-24", src, tmp_path / "out")
    shutil.rmtree(src / "videos" / "Fencing")
    with pytest.raises(AnnotationError) as e:
        load_dataset(tmp_path / "out")
    assert {p.video for p in problems_of(e)} == {"Fencing/v_Fencing_g02_c01", "Fencing/v_Fencing_g03_c02"}
    assert all("not found" in p.message for p in problems_of(e))
