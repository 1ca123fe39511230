"""SynthActions: layout, decodability, ground-truth validity, visibility, determinism (no Ray)."""

from __future__ import annotations

import dataclasses
import filecmp
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from raylab.config import SYNTH_PRESETS, ConfigError, load_config
from raylab.data import schema
from raylab.data.rle import rle_decode, rle_to_box
from raylab.data.synth_motion import MOTIONS, motion_offsets, place
from raylab.data.synthetic import PRESETS, SynthPreset, generate, num_videos, plan_videos, with_videos
from raylab.data.video import probe_video, read_frames
from raylab.rundir import dataset_root, ensure_dataset

TINY = PRESETS["tiny"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Root of a tiny SynthActions generation (seed 0) and its summary."""
    root = tmp_path_factory.mktemp("synth_a")
    return root, generate(root, "tiny", seed=0)


@pytest.fixture(scope="module")
def tiny_again(tmp_path_factory):
    """The same generation again, in two worker processes."""
    root = tmp_path_factory.mktemp("synth_b")
    generate(root, "tiny", seed=0, workers=2)
    return root


@pytest.fixture(scope="module")
def tiny_seed1(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth_c")
    generate(root, "tiny", seed=1, kinds=("spatiotemporal",))
    return root


def _tables(root, kind):
    """(index, gt) DataFrames of one kind."""
    gt_file = schema.GT_BOXES_FILE if kind == "spatiotemporal" else schema.GT_SEGMENTS_FILE
    return pd.read_parquet(root / kind / schema.INDEX_FILE), pd.read_parquet(root / kind / gt_file)


def _frames(root, kind, row):
    return read_frames(root / kind / row.path, range(row.num_frames))  # uint8 [T, H, W, 3]


@pytest.mark.parametrize(
    "kind, gt_file, gt_schema",
    [
        ("spatiotemporal", schema.GT_BOXES_FILE, schema.GT_BOXES_SCHEMA),
        ("temporal", schema.GT_SEGMENTS_FILE, schema.GT_SEGMENTS_SCHEMA),
    ],
)
def test_layout_and_schemas(tiny, kind, gt_file, gt_schema):
    root, summary = tiny
    d = root / kind
    assert schema.read_meta(d) == {
        "name": f"synthactions-tiny-{kind}", "kind": kind, "classes": list(MOTIONS[:3]),
        "source": "raylab.data.synthetic preset=tiny seed=0",
    }
    for name, expected in [
        (schema.INDEX_FILE, schema.INDEX_SCHEMA),
        (schema.QUARANTINE_FILE, schema.QUARANTINE_SCHEMA),
        (gt_file, gt_schema),
    ]:
        assert pq.read_schema(d / name).remove_metadata().equals(expected), name
    assert pq.read_table(d / schema.QUARANTINE_FILE).num_rows == 0
    index, gt = _tables(root, kind)
    n = TINY.st_videos if kind == "spatiotemporal" else TINY.temporal_videos
    assert summary[kind]["videos"] == len(index) == n
    assert summary[kind]["frames"] == index.num_frames.sum()
    assert summary[kind]["gt_rows"] == len(gt)
    assert (index.video_id + ".mp4" == index.path).all() and index.video_id.str.startswith("videos/").all()
    assert set(index.split) == {"train", "test"}
    assert not list(d.rglob("*.part"))  # no temporary file left behind


@pytest.mark.parametrize("kind", schema.KINDS)
def test_every_video_decodes_and_matches_index(tiny, kind):
    root, _ = tiny
    index, _ = _tables(root, kind)
    for row in index.itertuples():
        info = probe_video(root / kind / row.path)
        assert (info.num_frames, info.height, info.width) == (row.num_frames, row.height, row.width)
        assert info.fps == pytest.approx(row.fps)
        assert _frames(root, kind, row).shape == (row.num_frames, row.height, row.width, 3)


def test_boxes_and_masks_are_valid(tiny):
    root, _ = tiny
    index, gt = _tables(root, "spatiotemporal")
    rows = gt.merge(index, on="video_id", suffixes=("", "_video"))
    assert len(rows) == len(gt)  # every box row's video exists
    assert (rows.label == rows.label_video).all()
    assert ((rows.frame >= 0) & (rows.frame < rows.num_frames)).all()
    assert ((rows.x1 >= 0) & (rows.x1 < rows.x2) & (rows.x2 <= rows.width)).all()
    assert ((rows.y1 >= 0) & (rows.y1 < rows.y2) & (rows.y2 <= rows.height)).all()
    for r in rows.itertuples():
        mask = rle_decode(r.mask_rle, r.height, r.width)
        assert mask.shape == (r.height, r.width)
        np.testing.assert_array_equal(rle_to_box(r.mask_rle, r.height, r.width), [r.x1, r.y1, r.x2, r.y2])
    assert not gt.duplicated(["video_id", "frame", "actor"]).any()


def test_tubes_are_contiguous_and_videos_untrimmed(tiny):
    root, _ = tiny
    index, gt = _tables(root, "spatiotemporal")
    num_frames = index.set_index("video_id").num_frames
    assert set(gt.video_id) == set(index.video_id)  # every video has an action
    for (video_id, _), tube in gt.groupby(["video_id", "actor"]):
        frames = np.sort(tube.frame.to_numpy())
        np.testing.assert_array_equal(frames, np.arange(frames[0], frames[0] + frames.size))
        assert frames.size < num_frames[video_id]  # frames outside the tube exist and carry no row


def _saturation(frames):
    """max - min over RGB; float [..., H, W] (the background is grey-ish, the actors are saturated)."""
    return frames.max(axis=-1).astype(np.float32) - frames.min(axis=-1)


def test_actor_is_visible_where_the_mask_says(tiny):
    root, _ = tiny
    index, gt = _tables(root, "spatiotemporal")
    for row in index.itertuples():
        saturation = _saturation(_frames(root, "spatiotemporal", row))  # [T, H, W]
        tube = gt[gt.video_id == row.video_id]
        gaps = []
        for r in tube.itertuples():
            mask = rle_decode(r.mask_rle, row.height, row.width).astype(bool)
            # a 4-pixel ring around the box: background, right next to the actor
            ring = np.zeros_like(mask)
            ring[max(int(r.y1) - 4, 0) : int(r.y2) + 4, max(int(r.x1) - 4, 0) : int(r.x2) + 4] = True
            ring[int(r.y1) : int(r.y2), int(r.x1) : int(r.x2)] = False
            gaps.append(saturation[r.frame][mask].mean() - saturation[r.frame][ring].mean())
        assert np.median(gaps) > 60, row.video_id
        # outside the tube the actor is absent (tiny: actor_outside="absent"), so the frame is greyer
        outside = np.setdiff1d(np.arange(row.num_frames), tube.frame)
        inside_sat = np.mean([saturation[f][rle_decode(m, row.height, row.width) > 0].mean()
                              for f, m in zip(tube.frame, tube.mask_rle, strict=True)])
        assert np.percentile(saturation[outside], 50) < inside_sat - 60, row.video_id


@pytest.mark.parametrize("kind", schema.KINDS)
def test_same_seed_same_data_whatever_the_workers(tiny, tiny_again, kind):
    root, _ = tiny
    for a, b in zip(_tables(root, kind), _tables(tiny_again, kind), strict=True):
        pd.testing.assert_frame_equal(a, b)
    index, _ = _tables(root, kind)
    for row in index.itertuples():
        np.testing.assert_array_equal(_frames(root, kind, row), _frames(tiny_again, kind, row))
    assert filecmp.cmp(root / kind / "dataset.json", tiny_again / kind / "dataset.json", shallow=False)


def test_different_seed_different_data(tiny, tiny_seed1):
    root, _ = tiny
    (index0, gt0), (index1, gt1) = _tables(root, "spatiotemporal"), _tables(tiny_seed1, "spatiotemporal")
    assert not (index0.equals(index1) and gt0.equals(gt1))
    row0, row1 = index0.iloc[0], index1.iloc[0]
    n = min(row0.num_frames, row1.num_frames)
    f0 = read_frames(root / "spatiotemporal" / row0.path, range(n))
    f1 = read_frames(tiny_seed1 / "spatiotemporal" / row1.path, range(n))
    assert np.abs(f0.astype(int) - f1).mean() > 5


def test_temporal_segments(tiny):
    root, _ = tiny
    index, gt = _tables(root, "temporal")
    assert (index.label == -1).all()
    fps = TINY.fps
    for row in index.itertuples():
        seg = gt[gt.video_id == row.video_id].sort_values("t_start")
        assert len(seg) >= 1
        duration = row.num_frames / row.fps
        assert (seg.t_start >= TINY.min_gap / fps - 1e-9).all()  # idle before the first instance
        assert (seg.t_end <= duration - TINY.min_gap / fps + 1e-9).all()  # and after the last
        assert (seg.t_end > seg.t_start).all()
        gaps = seg.t_start.to_numpy()[1:] - seg.t_end.to_numpy()[:-1]
        assert (gaps >= TINY.min_gap / fps - 1e-9).all()  # non-overlapping, separated by background
        # boundaries fall on frames: t_start = first frame / fps, t_end = (last frame + 1) / fps
        in_frames = seg[["t_start", "t_end"]].to_numpy() * fps
        np.testing.assert_allclose(in_frames, np.round(in_frames), atol=1e-6)
    assert gt.label.between(0, TINY.num_classes - 1).all()
    assert set(gt.video_id) == set(index.video_id)


def test_every_class_in_train(tiny):
    root, _ = tiny
    index, _ = _tables(root, "spatiotemporal")
    assert set(index[index.split == "train"].label) == set(range(TINY.num_classes))
    assert set(index[index.split == "test"].label) == set(range(TINY.num_classes))
    index, gt = _tables(root, "temporal")
    train = set(index[index.split == "train"].video_id)
    assert set(gt[gt.video_id.isin(train)].label) == set(range(TINY.num_classes))


def test_refuses_to_overwrite_and_rejects_bad_arguments(tiny):
    root, _ = tiny
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate(root, "tiny", kinds=("temporal",))
    with pytest.raises(ValueError, match="unknown preset"):
        generate(root / "x", "huge")
    with pytest.raises(ValueError, match="width"):
        dataclasses.replace(TINY, st_size=(48, 48))
    with pytest.raises(ValueError, match="videos=5: a spatiotemporal set needs at least 6"):
        generate(root / "few", "tiny", kinds=("spatiotemporal",), videos=5)
    assert not (root / "few").exists()


def test_videos_overrides_the_presets_number_and_a_set_of_another_size_is_refused(tmp_path):
    out = tmp_path / "tiny-seed0"  # where a run with the tiny preset looks for its set
    summary = generate(out, "tiny", kinds=("spatiotemporal",), videos=9)
    index, _ = _tables(out, "spatiotemporal")
    assert summary["spatiotemporal"]["videos"] == len(index) == 9
    assert index.groupby("label").size().tolist() == [3, 3, 3]
    assert index.groupby("label").split.nunique().tolist() == [2, 2, 2]  # train and test in every class
    assert "videos=9" in json.loads((out / "spatiotemporal" / "dataset.json").read_text())["source"]
    # a run's generated set (data.synth_videos) lives apart from the preset's own
    cfg = load_config(None, ["data.synth_preset=tiny", "data.synth_videos=9", f"data.synth_dir={tmp_path}"])
    assert dataset_root(cfg) == tmp_path / "tiny-seed0-videos9" / "spatiotemporal"
    # the preset's own place holding a set of another size (as one made when the preset was smaller):
    # refused with what to do, and left as it was
    before = sorted(p.name for p in (out / "spatiotemporal" / "videos").iterdir())
    refused = "holds a SynthActions set of 9 videos.*makes 12 now.*synth_videos=9"
    with pytest.raises(ConfigError, match=refused):
        ensure_dataset(load_config(None, ["data.synth_preset=tiny", f"data.synth_dir={tmp_path}"]))
    assert sorted(p.name for p in (out / "spatiotemporal" / "videos").iterdir()) == before


def test_extra_test_videos_are_appended_to_the_test_split_and_change_no_other_video():
    """The small set's test split is enlarged without touching its first st_videos videos (whose runs
    stay comparable), and an explicit number of videos (data.synth_videos) is split as before."""
    tiny = PRESETS["tiny"]
    plain = plan_videos("spatiotemporal", tiny, 3)
    enlarged = plan_videos("spatiotemporal", dataclasses.replace(tiny, extra_test_videos=7), 3)
    assert enlarged[:len(plain)] == plain
    extra = enlarged[len(plain):]
    assert [v.number for v in extra] == list(range(12, 19)) and {v.split for v in extra} == {"test"}
    assert sorted(np.bincount([v.label for v in extra]).tolist()) == [2, 2, 3]  # as balanced as 7 allows
    assert len({v.video_id for v in enlarged}) == 19
    small = PRESETS["small"]
    specs = plan_videos("spatiotemporal", small, 0)
    assert num_videos(small, "spatiotemporal") == len(specs) == 228
    assert [sum(v.split == s for v in specs) for s in ("train", "test")] == [102, 126]
    assert all(np.bincount([v.label for v in specs if v.split == s]).tolist() == [n] * 6
               for s, n in (("train", 17), ("test", 21)))
    # an explicit number: every video split by train_fraction, the same set as the 144-video small
    # preset made until 2026-12-05
    assert num_videos(with_videos(small, "spatiotemporal", 144), "spatiotemporal") == 144
    assert plan_videos("spatiotemporal", with_videos(small, "spatiotemporal", 144), 0) == specs[:144]
    assert num_videos(small, "temporal") == small.temporal_videos
    with pytest.raises(ValueError, match="extra_test_videos"):
        dataclasses.replace(tiny, extra_test_videos=-1)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_consistent(name):
    preset = PRESETS[name]
    assert isinstance(preset, SynthPreset)
    assert preset.st_videos >= 2 * preset.num_classes  # a train and a test video per class


def test_config_names_every_preset():
    """data.synth_preset and `raylab synth --preset` accept exactly the generator's presets."""
    assert sorted(SYNTH_PRESETS) == sorted(PRESETS)


@pytest.mark.parametrize("name", MOTIONS)
def test_motions_start_at_rest_and_differ(name):
    u = np.linspace(0, 1, 40)
    dx, dy, scale, dangle = motion_offsets(name, u, 96, 1.0, np.random.default_rng(0))
    assert (dx[0], dy[0], scale[0], dangle[0]) == pytest.approx((0, 0, 1, 0))
    moved = np.abs(np.stack([dx, dy, 20 * (scale - 1), 20 * dangle])).max()
    assert moved > 5  # every class visibly moves
    others = [motion_offsets(m, u, 96, 1.0, np.random.default_rng(0)) for m in MOTIONS if m != name]
    for other in others:
        assert not np.allclose(np.stack([dx, dy, scale, dangle]), np.stack(other))
    traj = place((dx, dy, scale, dangle), 0.0, 12.0, 64, 96, np.random.default_rng(1))
    r = 12.0 * traj.scale
    assert (traj.cx - r >= -1e-9).all() and (traj.cx + r <= 96 + 1e-9).all()
    assert (traj.cy - r >= -1e-9).all() and (traj.cy + r <= 64 + 1e-9).all()
