"""MC-dropout scoring: rows, shards committed as they are written, resume after a kill, the columnar read
that selection uses; the Ray Data actor pool on the tiny SynthActions set."""

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from raylab.acquisition.select import select_frames
from raylab.config import load_config
from raylab.data.clips import clip_offsets, tile_clips, tile_counts, tile_video
from raylab.data.stream import clip_table, decode_clips, decode_tiles, tiling_videos
from raylab.loop import open_run
from raylab.models.detector import Detector
from raylab.score import (
    SIGNATURE_FILE,
    SUMMARY_FILE,
    committed_ranges,
    frame_rows,
    missing_ranges,
    open_partial,
    read_score_columns,
    write_shard,
)
from raylab.train import MODEL_FILE, save_detector

# the tiny SynthActions set; 8 clips per decode task: 9 blocks, so 9 shards
OVERRIDES = ["labels.init_fraction=0.2", "score.trials=4", "clips.clips_per_task=8"]


def test_frame_rows_keep_owned_unlabelled_frames_only():
    batch = {"video_id": np.array(["a", "b"], dtype=object), "frames": np.array([[0, 1], [4, 5]]),
             "owned": np.array([[True, True], [False, True]]),
             "annotated": np.array([[False, True], [False, False]])}
    probs = np.full((3, 2, 2, 4, 4), 0.5)  # maximal uncertainty everywhere
    rows = frame_rows(batch, probs, tau=0.9)
    assert list(zip(rows["video_id"], rows["frame"])) == [("a", 0), ("b", 5)]
    assert np.allclose(rows["uncertainty"], 1.0) and np.allclose(rows["fg_fraction"], 1.0)


@pytest.mark.parametrize("length, stride", [(1, 1), (4, 1), (8, 3), (3, 5)])
def test_tile_counts_and_offsets_match_the_tiling(length, stride):
    num_frames = np.array([0, 1, 2, 7, 8, 9, 16, 31, 64])
    assert tile_counts(num_frames, length, stride).tolist() == \
        [len(tile_video(int(n), length, stride)) for n in num_frames]
    offsets = clip_offsets(num_frames, length, stride)
    assert offsets[0] == 0 and offsets[-1] == len(tile_clips(pd.DataFrame(
        {"video_id": [str(i) for i in range(len(num_frames))], "num_frames": num_frames}), length, stride))


def test_missing_ranges_cut_at_blocks_and_skip_what_is_covered():
    assert missing_ranges(20, 8, []) == [(0, 8), (8, 16), (16, 20)]
    assert missing_ranges(20, 8, [(8, 16)]) == [(0, 8), (16, 20)]
    assert missing_ranges(20, 8, [(0, 3), (16, 20)]) == [(3, 8), (8, 16)]  # a block covered in part
    assert missing_ranges(20, 8, [(0, 8), (8, 16), (16, 20)]) == []
    assert missing_ranges(0, 8, []) == []


def test_shards_commit_atomically_and_a_partial_folder_keeps_only_its_signature(tmp_path):
    folder = tmp_path / ".cycle=0.partial"
    assert open_partial(folder, {"checkpoint_sha256": "a"}) == []
    rows = {"video_id": np.array(["v1", "v2"], dtype=object), "frame": np.array([3, 4], np.int32),
            "uncertainty": np.array([0.5, 0.25], np.float32)}
    write_shard(folder, 0, 8, rows)
    write_shard(folder, 16, 20, {k: v[:0] for k, v in rows.items()})  # a block with every frame labelled
    (folder / ".clips-0000000008-0000000016.parquet.1234.tmp").write_bytes(b"half a shard")  # a kill
    assert committed_ranges(folder) == [(0, 8), (16, 20)]
    assert open_partial(folder, {"checkpoint_sha256": "a"}) == [(0, 8), (16, 20)]
    assert not list(folder.glob(".*.tmp"))  # what the kill left is removed, the shards stay
    table = read_score_columns(folder)
    assert table.num_rows == 2 and table.schema.field("uncertainty").type == pa.float32()
    assert pa.types.is_dictionary(table.schema.field("video_id").type)
    # scored with another checkpoint: nothing of it is kept
    assert open_partial(folder, {"checkpoint_sha256": "b"}) == [] and committed_ranges(folder) == []
    assert json.loads((folder / SIGNATURE_FILE).read_text()) == {"checkpoint_sha256": "b"}


def test_selection_from_the_columnar_table_equals_selection_from_pandas(tmp_path):
    rng = np.random.default_rng(0)
    num_frames = {f"v{i}": int(n) for i, n in enumerate(rng.integers(5, 40, size=30))}
    vid = np.repeat(list(num_frames), list(num_frames.values()))
    frame = np.concatenate([np.arange(n) for n in num_frames.values()]).astype(np.int32)
    u = rng.random(vid.size).astype(np.float32)
    labelled = pd.DataFrame({"video_id": ["v3", "v3", "v7"], "frame": [2, 9, 0]})
    order = rng.permutation(vid.size)  # shards in any order
    for i, part in enumerate(np.array_split(order, 4)):
        rows = {"video_id": vid[part].astype(object), "frame": frame[part], "uncertainty": u[part]}
        write_shard(tmp_path, i * 10, i * 10 + 10, rows)
    columns = read_score_columns(tmp_path)
    frame_of_pandas = pd.DataFrame({"video_id": vid, "frame": frame, "uncertainty": u})
    for strategy in ("apu-global", "uncertainty"):
        a = select_frames(columns, labelled, num_frames, 25, strategy)
        b = select_frames(frame_of_pandas, labelled, num_frames, 25, strategy)
        pd.testing.assert_frame_equal(a, b)
    with pytest.raises(ValueError, match="video 'v1' is not in num_frames"):
        select_frames(columns, labelled, {k: v for k, v in num_frames.items() if k != "v1"}, 5)


@pytest.fixture(scope="module")
def scored_run(tmp_path_factory):
    synth, run = tmp_path_factory.mktemp("synth"), tmp_path_factory.mktemp("run")
    cfg = load_config("pipelines/smoke.yaml", [f"data.synth_dir={synth}", *OVERRIDES])
    data, store = open_run(cfg, run)
    torch.manual_seed(0)
    (run / "checkpoints" / "cycle=0").mkdir(parents=True)
    save_detector(run / "checkpoints" / "cycle=0" / MODEL_FILE, Detector(cfg.detector, len(data.classes)))
    return cfg, data, store


def test_tasks_make_the_clips_of_the_dense_tiling(scored_run):
    """`decode_tiles` (clips made in the task from clip ranges) gives the clips, ownership and labelled
    flags of the clip-table stream, for ranges that cross videos."""
    cfg, data, store = scored_run
    c = cfg.clips
    labelled = store.labelled_frames()
    videos = tiling_videos(data.train, data.root, labelled, c.length, c.stride)
    tiles = tile_clips(data.train, c.length, c.stride)
    table = clip_table(tiles, data.index, data.root, None)
    start, stop = 5, 5 + 3 * int(videos["first_clip"][1])  # from video 0 into video 2 or beyond
    got = decode_tiles(pa.table({"id": [1]}), np.array([[0, 4], [start, stop]]), videos, (c.height, c.width))
    want = decode_clips(table.slice(start, stop - start), (c.height, c.width), cfg.labels.sigma)
    assert got["clip_index"].tolist() == list(range(start, stop))
    assert len(set(got["video_id"])) >= 3 and got["video_id"].tolist() == want["video_id"].tolist()
    for key in ("frames", "owned", "clip"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    annotated = [[int(f) in set(labelled.get(v, [])) for f in frames]
                 for v, frames in zip(got["video_id"], got["frames"])]
    assert got["annotated"].tolist() == annotated and got["annotated"].any()


def read_scores(path) -> pd.DataFrame:
    return pd.read_parquet(path).sort_values(["video_id", "frame"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference_scores(ray_local, scored_run) -> pd.DataFrame:
    """An uninterrupted scoring of cycle 0, one actor on the session's Ray."""
    from raylab.score import score_cycle

    cfg, data, store = scored_run
    out = score_cycle(cfg, data, store, 0)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["clips_resumed"] == 0 and summary["clips_scored"] == summary["clips"] == 69
    assert summary["shards"] == summary["shards_written"] == 9
    return read_scores(out)


@pytest.mark.ray
def test_every_frame_is_scored_once_and_neither_pool_size_nor_process_changes_scores(scored_run,
                                                                                     reference_scores):
    from raylab.score import score_cycle

    cfg, data, store = scored_run
    train, run = data.train, data.paths.path
    one = reference_scores
    labelled = {(v, int(f)) for v, frames in store.labelled_frames().items() for f in frames}
    expected = {(v, f) for v, n in zip(train["video_id"], train["num_frames"]) for f in range(n)} - labelled
    assert len(one) == len(expected) and set(zip(one["video_id"], one["frame"])) == expected
    assert one["uncertainty"].between(0, 1).all() and one["uncertainty"].std() > 0
    assert len(list((run / "scores" / "cycle=0").glob("*.parquet"))) == 9  # one shard per block

    # two actors holding 1.5 of the 2 CPUs: decode tasks must run in the half CPU left
    pool_of_two = replace(cfg, score=replace(cfg.score, actors=2, cpus_per_actor=0.75),
                          ray=replace(cfg.ray, decode_num_cpus=0.5))
    two = read_scores(score_cycle(pool_of_two, data, store, 0))
    pd.testing.assert_frame_equal(one, two)

    # a sweep trial scores in its own process (ray.in_process): the same clips, so the same scores
    in_process = replace(cfg, ray=replace(cfg.ray, in_process=True))
    pd.testing.assert_frame_equal(one, read_scores(score_cycle(in_process, data, store, 0)))


@pytest.mark.ray
def test_a_scoring_step_killed_mid_way_resumes_with_the_clips_that_have_no_shard(scored_run, reference_scores,
                                                                                tmp_path):
    """The driver of a scoring step, with a local Ray of its own, is killed (SIGKILL of its process
    group: driver, Ray and actor) once its scorer has committed 3 of the 9 shards and hangs in the 4th.
    Rerun, the step scores only the 6 blocks without a shard, and the table equals an uninterrupted
    run's."""
    from raylab.score import score_cycle
    from tests.cluster_jobs import HOLD, kill_scenario_when

    cfg, data, store = scored_run
    partial = data.paths.scores(0).with_name(".cycle=0.partial")
    kill_scenario_when(lambda: len(committed_ranges(partial)) >= 3, "score_held", data.paths.path,
                       tmp_path / "out", [f"data.synth_dir={cfg.data.synth_dir}", *OVERRIDES],
                       env={HOLD: "3"})
    committed = committed_ranges(partial)
    assert len(committed) == 3 and all(a % 8 == 0 and b in (a + 8, 69) for a, b in committed)  # whole blocks
    assert (data.paths.scores(0) / SUMMARY_FILE).is_file()  # the uninterrupted table is still there

    out = score_cycle(cfg, data, store, 0)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    done_before = sum(b - a for a, b in committed)
    assert summary["clips"] == 69 and summary["clips_resumed"] == done_before > 0
    assert summary["shards_written"] == 6 and summary["clips_scored"] == 69 - done_before < 69
    assert not partial.exists()
    pd.testing.assert_frame_equal(read_scores(out), reference_scores)
