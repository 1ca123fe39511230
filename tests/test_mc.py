"""Per-sample dropout seeds (`raylab.models.mc.per_sample_seeds`): a clip's MC-dropout masks depend on
its own seed only, never on the batch it is scored in; the shared-encoder path still equals full passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raylab.models.detector import Detector, DetectorConfig
from raylab.models.mc import mc_forward, mc_forward_full, per_sample_seeds


@pytest.fixture(scope="module")
def detector() -> Detector:
    torch.manual_seed(0)
    return Detector(DetectorConfig(), num_classes=3)


def test_a_clip_gets_the_same_scores_in_any_batch(detector, one_torch_thread):
    torch.manual_seed(1)
    x = torch.randn(3, 3, 8, 32, 32)
    seeds = [11, 22, 33]
    fg, cls = mc_forward(detector, x, trials=3, seed=seeds)
    fg_full, _ = mc_forward_full(detector, x, trials=3, seed=seeds)
    torch.testing.assert_close(fg, fg_full, rtol=0, atol=1e-6)
    # clip 1 alone, and clips in reverse order: the same masks, so the same probabilities
    alone, alone_cls = mc_forward(detector, x[1:2], trials=3, seed=seeds[1:2])
    torch.testing.assert_close(alone[:, 0], fg[:, 1], rtol=0, atol=1e-5)
    torch.testing.assert_close(alone_cls[:, 0], cls[:, 1], rtol=0, atol=1e-5)
    reverse, _ = mc_forward(detector, x.flip(0), trials=3, seed=seeds[::-1])
    torch.testing.assert_close(reverse.flip(1), fg, rtol=0, atol=1e-5)
    assert not torch.allclose(fg[0], fg[1])  # trials draw different masks
    other, _ = mc_forward(detector, x[1:2], trials=3, seed=[99])
    assert not torch.allclose(other[:, 0], fg[:, 1])  # and another seed other masks


def test_per_sample_masks_rate_shape_and_rng(one_torch_thread):
    """Inverted dropout with the module's p; channel dropout masks whole channels; a module called
    twice in a block gets two masks; the global RNG is neither used nor moved; modules are restored."""
    drop, drop3d = nn.Dropout(0.3), nn.Dropout3d(0.5)
    model = nn.ModuleDict({"a": drop, "b": drop3d}).train()
    x = torch.ones(2, 4000)
    state = torch.get_rng_state()
    with per_sample_seeds(model, [5, 6], trial=0):
        y1, y2 = drop(x), drop(x)
        z = drop3d(torch.ones(2, 64, 2, 3, 3))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.unique(y1).tolist() == pytest.approx([0.0, 1 / 0.7])
    assert abs(float((y1 == 0).float().mean()) - 0.3) < 0.03
    assert not torch.equal(y1, y2) and not torch.equal(y1[0], y1[1])
    per_channel = z.flatten(2)
    assert torch.equal(per_channel.amin(-1), per_channel.amax(-1))  # one value per (sample, channel)
    assert drop.training and drop3d.training and not drop._forward_hooks
    with per_sample_seeds(model, [5, 6], trial=0):
        again = drop(x)
    assert torch.equal(again, y1)
    with pytest.raises(ValueError, match="2 per-sample seeds for a batch of 3"):
        with per_sample_seeds(model, [5, 6], trial=0):
            drop(torch.ones(3, 4))
    with pytest.raises(NotImplementedError, match="AlphaDropout"):
        with per_sample_seeds(nn.AlphaDropout(0.2), [1], trial=0):
            pass
