"""Whole-video inference sees the frames as training saw them."""

import numpy as np
import pandas as pd
import pytest
import torch

from raylab.data.video import write_video
from raylab.eval.predict import predict_each_video, video_class_probs
from tests.conftest import blob_frames


class StepMeter(torch.nn.Module):
    """A stand-in detector whose foreground logit on every pixel of clip frame j is how far the square
    of `blob_frames` moves between frames j and j + 1 of the clip (frame j - 1 and j for the last)."""

    def forward(self, clip: torch.Tensor) -> dict:  # [B, 3, T, H, W]
        bright = clip.mean(1)  # [B, T, H, W]
        columns = torch.arange(bright.shape[-1], dtype=torch.float32)
        weights = (bright > 0).float().sum(-2)  # bright pixels per column [B, T, W]
        x = (weights * columns).sum(-1) / weights.sum(-1)  # the square's centre [B, T]
        steps = x.diff(dim=1)
        steps = torch.cat([steps, steps[:, -1:]], 1)
        b, t = steps.shape
        return {"fg_logits": steps[:, :, None, None].expand(b, t, *bright.shape[-2:]),
                "class_probs": torch.full((b, 2), 0.5)}


@pytest.mark.parametrize("stride", [1, 2])
def test_every_frame_is_predicted_by_a_clip_of_the_training_stride(tmp_path, stride):
    write_video(tmp_path / "v.mp4", blob_frames(16), fps=25)  # the square moves 1 pixel per frame
    columns = ["video_id", "path", "num_frames", "fps", "height", "width", "label", "split"]
    index = pd.DataFrame([("v", "v.mp4", 16, 25.0, 32, 64, 0, "test")], columns=columns)
    [(_, fg, _)] = list(predict_each_video(StepMeter(), index, tmp_path, 4, (32, 64), 8, "cpu", stride))
    steps = np.log(fg / (1 - fg))[:, 0, 0]  # the logit of every frame
    assert np.allclose(steps, stride, atol=0.25), steps


class Brightness(torch.nn.Module):
    """A stand-in detector that follows what it sees: the foreground logit of a pixel is 8 where the
    frame is bright and -8 elsewhere, and every clip names class 0."""

    def forward(self, clip: torch.Tensor) -> dict:
        logits = torch.where(clip.mean(1) > 0, 8.0, -8.0)
        return {"fg_logits": logits, "class_probs": torch.tensor([[1.0, 0.0]]).expand(len(clip), 2)}


class SlotAndColumn(torch.nn.Module):
    """A stand-in detector that ignores the frames: the foreground logit of clip slot j at column x is
    j + x / 10, so each prediction tells which slot of which view made it."""

    def forward(self, clip: torch.Tensor) -> dict:
        b, _, t, h, w = clip.shape
        logits = torch.arange(t, dtype=torch.float32)[:, None, None] + torch.arange(w) / 10.0
        return {"fg_logits": logits.expand(b, t, h, w), "class_probs": torch.full((b, 2), 0.5)}


def _one_video(tmp_path, frames: int):
    write_video(tmp_path / "v.mp4", blob_frames(frames), fps=25)
    columns = ["video_id", "path", "num_frames", "fps", "height", "width", "label", "split"]
    return pd.DataFrame([("v", "v.mp4", frames, 25.0, 32, 64, 0, "test")], columns=columns)


def test_mirrored_clips_are_mirrored_back_and_averaged(tmp_path):
    index = _one_video(tmp_path, 8)

    def predict(model, flip):
        [(_, fg, _)] = list(predict_each_video(model, index, tmp_path, 4, (32, 64), 8, "cpu", flip=flip))
        return fg

    plain, both = predict(Brightness(), False), predict(Brightness(), True)
    assert (plain > 0.5).sum() > 0 and np.allclose(both, plain)  # the square stays where it is
    fg = predict(SlotAndColumn(), True)
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    x = np.arange(64)
    expected = (sigmoid(1 + x / 10) + sigmoid(1 + (63 - x) / 10)) / 2  # frame 1: slot 1 of clip 0
    assert np.allclose(fg[1, 5], expected, atol=1e-4)


def test_a_frame_held_by_two_clips_takes_the_mean_of_both(tmp_path):
    """10 frames in clips of 4: clips 0-3, 4-7 and 6-9 (the last moved back); frames 6 and 7 sit in
    slots 2, 3 of the second clip and 0, 1 of the third."""
    index = _one_video(tmp_path, 10)
    [(_, fg, _)] = list(predict_each_video(SlotAndColumn(), index, tmp_path, 4, (32, 64), 8, "cpu"))
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    assert fg[5, 0, 0] == pytest.approx(sigmoid(1.0), abs=1e-5)  # in one clip only
    assert fg[6, 0, 0] == pytest.approx((sigmoid(2.0) + sigmoid(0.0)) / 2, abs=1e-5)
    assert fg[9, 0, 0] == pytest.approx(sigmoid(3.0), abs=1e-5)


def test_video_class_probabilities_pool_the_clips_by_mean_or_by_each_class_s_peak():
    clips = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4]])
    assert np.allclose(video_class_probs(clips), [1.4 / 3, 1.1 / 3, 0.5 / 3])
    # the mean follows three clips that lean to class 0; the peaks, the one clip sure of class 1
    leaning = np.array([[0.8, 0.2], [0.8, 0.2], [0.8, 0.2], [0.05, 0.95]])
    assert np.argmax(video_class_probs(leaning)) == 0
    peaks = video_class_probs(leaning, "max")
    assert np.argmax(peaks) == 1 and np.allclose(peaks, [0.8 / 1.75, 0.95 / 1.75])
    with pytest.raises(ValueError, match="class pooling must be one of mean, max"):
        video_class_probs(clips, "median")


def test_a_document_subset_keeps_only_its_videos_and_test_folds_cut_each_class_in_order():
    from benchmarks.reevaluate import split_test_videos
    from raylab.eval.predict import document_subset

    box = [[1, 0.0, 0.0, 10.0, 10.0]]
    doc = {"labels": ["a", "b"],
           "videos": {v: {"nframes": 1, "width": 32, "height": 32, "tubes": [{"label": 0, "boxes": box}]}
                      for v in ("v0", "v1", "v2")},
           "frame_detections": [{"video": v, "frame": 1, "label": 0, "score": 0.9, "box": [0, 0, 10, 10]}
                                for v in ("v0", "v2")],
           "tube_detections": [{"video": "v1", "label": 0, "score": 0.5, "boxes": box}],
           "predicted_classes": {"v0": 0, "v1": 1, "v2": 0}}
    part = document_subset(doc, ["v1", "v2"])
    assert list(part["videos"]) == ["v1", "v2"] and part["labels"] == ["a", "b"]
    assert [d["video"] for d in part["frame_detections"]] == ["v2"]
    assert [d["video"] for d in part["tube_detections"]] == ["v1"]
    assert part["predicted_classes"] == {"v1": 1, "v2": 0} and len(doc["videos"]) == 3  # doc untouched

    # index order: a0 b0 a1 a2 b1 a3 a4 b2 a5 -> per class in that order, cut into 3 runs
    names = ["a0", "b0", "a1", "a2", "b1", "a3", "a4", "b2", "a5"]
    test = pd.DataFrame({"video_id": names, "label": [0 if n[0] == "a" else 1 for n in names]})
    parts = [sorted(p["video_id"]) for p in split_test_videos(test, 3)]
    assert parts == [["a0", "a1", "b0"], ["a2", "a3", "b1"], ["a4", "a5", "b2"]]
    with pytest.raises(ValueError, match="class 1 has 3 test videos"):
        split_test_videos(test, 4)
