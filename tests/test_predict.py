"""Whole-video inference sees the frames as training saw them."""

import numpy as np
import pandas as pd
import pytest
import torch

from raylab.data.video import write_video
from raylab.eval.predict import predict_each_video
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
