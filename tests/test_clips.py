import numpy as np
import pandas as pd
import pytest

from raylab.data.clips import annotated_clips, tile_clips, tile_video, video_clips


@pytest.mark.parametrize("num_frames", [1, 3, 7, 8, 9, 16, 23])
@pytest.mark.parametrize("length,stride", [(4, 1), (8, 1), (4, 2), (3, 3)])
def test_tiling_owns_every_frame_exactly_once(num_frames, length, stride):
    clips = tile_video(num_frames, length, stride)
    owned = np.concatenate([f[o] for f, o in clips])
    assert sorted(owned.tolist()) == list(range(num_frames))
    for frames, _ in clips:
        assert len(frames) == length and frames.min() >= 0 and frames.max() < num_frames
        steps = np.diff(frames)
        assert np.all((steps == stride) | (steps == 0))  # 0 only where a short phase is padded


def test_tiling_resolves_the_end_overlap_in_favour_of_the_earlier_clip():
    clips = tile_video(10, 4, 1)
    assert [f.tolist() for f, _ in clips] == [[0, 1, 2, 3], [4, 5, 6, 7], [6, 7, 8, 9]]
    assert clips[2][1].tolist() == [False, False, True, True]


def test_tile_clips_table():
    index = pd.DataFrame({"video_id": ["a", "b"], "num_frames": [5, 2]})
    clips = tile_clips(index, 4, 1)
    assert clips["video_id"].tolist() == ["a", "a", "b"]
    assert clips["frames"][2].tolist() == [0, 1, 1, 1]


def test_annotated_clips_hold_their_frame_inside_the_video():
    index = pd.DataFrame({"video_id": ["a", "b", "c"], "num_frames": [20, 5, 30]})
    labelled = {"a": np.array([0, 10, 19]), "b": np.array([2])}
    clips = annotated_clips(index, labelled, length=8, stride=2, per_annotation=3, seed=1)
    assert len(clips) == 3 * 4 and "c" not in set(clips["video_id"])
    for (video, frames), a in zip(clips[["video_id", "frames"]].itertuples(index=False),
                                  np.repeat([0, 10, 19, 2], 3)):
        assert a in frames
        n = int(index.set_index("video_id").loc[video, "num_frames"])
        assert frames.max() < n
        if n > 14:  # the clip span fits: no padding
            assert np.all(np.diff(frames) == 2)


def test_annotated_clips_are_deterministic_in_the_seed():
    index = pd.DataFrame({"video_id": ["a"], "num_frames": [50]})
    labelled = {"a": np.arange(0, 50, 5)}
    one = annotated_clips(index, labelled, 8, 1, seed=3)["start"].tolist()
    assert one == annotated_clips(index, labelled, 8, 1, seed=3)["start"].tolist()
    assert one != annotated_clips(index, labelled, 8, 1, seed=4)["start"].tolist()


def test_cover_puts_every_annotated_frame_in_a_clip_without_one_clip_per_frame():
    index = pd.DataFrame({"video_id": ["a", "b"], "num_frames": [100, 6]})
    labelled = {"a": np.arange(100), "b": np.array([1, 4])}
    clips = annotated_clips(index, labelled, length=8, stride=1, seed=0, cover=True)
    for video, frames in labelled.items():
        held = np.concatenate(clips.loc[clips["video_id"] == video, "frames"].tolist())
        assert set(frames) <= set(held)
    assert len(clips[clips["video_id"] == "a"]) < 100 / 8 * 2.5  # not 100 clips, one per frame
    assert len(annotated_clips(index, labelled, 8, 1, seed=0)) == 102  # without cover: one per frame
    twice = annotated_clips(index, labelled, 8, 1, per_annotation=2, seed=0, cover=True)
    held = np.concatenate(twice.loc[twice["video_id"] == "a", "frames"].tolist())
    assert np.bincount(held, minlength=100).min() >= 2


def test_video_clips_cover_every_video_whatever_its_labels():
    index = pd.DataFrame({"video_id": ["a", "b", "c"], "num_frames": [30, 8, 3]})
    clips = video_clips(index, per_video=3, length=8, stride=1, seed=0)
    assert clips.groupby("video_id").size().to_dict() == {"a": 3, "b": 3, "c": 3}
    for video, frames in zip(clips["video_id"], clips["frames"]):
        n = int(index.set_index("video_id").loc[video, "num_frames"])
        assert len(frames) == 8 and frames.max() < n
    assert not clips["start"].equals(video_clips(index, 3, 8, 1, seed=1)["start"])
