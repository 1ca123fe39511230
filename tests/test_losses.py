"""Torch losses of the ASL detector: exact values, true loss weights, and the MGW limits (σ → 0, ∞)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raylab.losses import (
    detector_loss,
    margin_loss,
    mgw_weights,
    spread_loss,
    spread_margin,
    weighted_bce,
)


def test_weighted_bce_hand_value():
    # one clip, two frames of 1x2 pixels; targets [1, 0] on both frames
    logits = torch.tensor([[[[0.0, 0.0]], [[math.log(3), math.log(3)]]]])  # [1, 2, 1, 2]
    target = torch.tensor([[[[1.0, 0.0]], [[1.0, 0.0]]]])
    weight = torch.tensor([[1.0, 0.5]])
    frame0 = math.log(2)  # BCE(0, y) = ln 2 for either label
    frame1 = (math.log(1 + 1 / 3) + math.log(1 + 3)) / 2  # BCE(x, 1) = ln(1+e^-x), BCE(x, 0) = ln(1+e^x)
    expected = (1.0 * frame0 + 0.5 * frame1) / 1.5  # normaliser: the weights' sum
    assert weighted_bce(logits, target, weight).item() == pytest.approx(expected, abs=1e-6)


def test_zero_weight_gives_zero_loss_and_exactly_zero_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = (torch.rand(2, 3, 4, 4) > 0.5).float()
    weight = torch.tensor([[1.0, 0.0, 0.3], [0.0, 0.0, 0.0]])
    loss = weighted_bce(logits, target, weight)
    loss.backward()
    zero = weight == 0
    assert torch.all(logits.grad[zero] == 0)
    assert torch.all(logits.grad[~zero].abs().sum((-1, -2)) > 0)
    # whatever a zero-weight frame predicts or is told, the loss does not move
    logits2 = logits.detach().clone()
    logits2[zero] = 50.0
    target2 = target.clone()
    target2[zero] = 1 - target2[zero]
    assert weighted_bce(logits2, target2, weight).item() == loss.item()
    assert weighted_bce(logits, target, torch.zeros(2, 3)).item() == 0.0


def _loss_with(weights: np.ndarray, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, len(weights), 6, 6, generator=g)
    target = (torch.rand(1, len(weights), 6, 6, generator=g) > 0.5).float()
    return weighted_bce(logits, target, torch.as_tensor(weights)[None])


@pytest.mark.parametrize("annotated", [[3], [0, 7], [2, 5, 6]])
def test_mgw_limits_equal_masking_and_interpolation(annotated):
    frames = np.arange(8)
    tiny = mgw_weights(frames, np.array(annotated), sigma=1e-3)
    huge = mgw_weights(frames, np.array(annotated), sigma=1e6)
    masking = mgw_weights(frames, np.array(annotated), sigma=1.3, weighting="masking")
    interp = mgw_weights(frames, np.array(annotated), sigma=1.3, weighting="interpolation")
    np.testing.assert_array_equal(tiny, masking)
    np.testing.assert_array_equal(huge, interp)
    assert torch.equal(_loss_with(tiny), _loss_with(masking))
    assert torch.equal(_loss_with(huge), _loss_with(interp))
    # in between, a weighted mean of the frames' losses, whatever the labels' density
    weights = mgw_weights(frames, np.array(annotated), sigma=1.3)
    per_frame = torch.stack([_loss_with(np.eye(len(frames))[i]) for i in frames])  # one frame each
    assert _loss_with(weights).item() == pytest.approx(
        float((per_frame * torch.as_tensor(weights)).sum() / max(weights.sum(), 1.0)), rel=1e-6)


def test_sparse_labels_keep_the_localisation_loss_scale():
    """A clip with one labelled frame weighs its BCE as a clip with every frame labelled does (the
    weights' sum, not the frame count, normalises), and a batch of faint weights is not blown up."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 8, 6, 6, generator=g)
    target = torch.ones(1, 8, 6, 6)
    same = logits[:, :1].expand(1, 8, 6, 6)  # every frame predicts as frame 0
    one = torch.zeros(1, 8)
    one[0, 0] = 1.0
    assert weighted_bce(same, target, one).item() == pytest.approx(
        weighted_bce(same, target, torch.ones(1, 8)).item(), rel=1e-6)
    faint = torch.full((1, 8), 0.01)
    assert weighted_bce(same, target, faint).item() == pytest.approx(
        0.08 * weighted_bce(same, target, torch.ones(1, 8)).item(), rel=1e-5)


def test_interpolation_weighting_is_plain_mean_bce():
    logits, target = torch.randn(2, 4, 5, 5), (torch.rand(2, 4, 5, 5) > 0.5).float()
    plain = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert weighted_bce(logits, target, torch.ones(2, 4)).item() == pytest.approx(plain.item(), rel=1e-6)


def test_margin_loss_hand_values():
    lengths = torch.tensor([[0.95, 0.05], [0.5, 0.3], [0.2, 0.9]])
    labels = torch.tensor([0, 1, -1])  # the -1 row carries no loss
    # row 0: both terms inside the margins -> 0; row 1: (0.9 - 0.3)^2 + 0.5 * (0.5 - 0.1)^2 = 0.44
    assert margin_loss(lengths, labels).item() == pytest.approx(0.44 / 2, abs=1e-6)
    assert margin_loss(lengths[:1], labels[:1]).item() == 0.0
    assert margin_loss(lengths[2:], labels[2:]).item() == 0.0
    loose = margin_loss(lengths[1:2], labels[1:2], m_plus=0.3, m_minus=0.5, lam=1.0)
    assert loose.item() == 0.0


def test_spread_loss_and_margin_schedule():
    a = torch.tensor([[0.8, 0.5, 0.1]])
    # others: max(0, 0.5 - (0.8 - 0.5))^2 = 0.04; max(0, 0.5 - 0.7)^2 = 0
    assert spread_loss(a, torch.tensor([0]), margin=0.5).item() == pytest.approx(0.04, abs=1e-6)
    assert spread_loss(a, torch.tensor([-1]), margin=0.5).item() == 0.0
    assert spread_margin(0, 10) == pytest.approx(0.2)
    assert spread_margin(5, 10) == pytest.approx(0.55)
    assert spread_margin(10, 10) == pytest.approx(0.9)
    assert spread_margin(99, 10) == pytest.approx(0.9)


def test_detector_loss_terms():
    torch.manual_seed(0)
    fg_logits = torch.randn(2, 3, 4, 4)
    batch = {"label": torch.tensor([1, -1]), "fg": (torch.rand(2, 3, 4, 4) > 0.5).float(),
             "weight": torch.rand(2, 3)}
    loc = weighted_bce(fg_logits, batch["fg"], batch["weight"])
    caps = {"class_lengths": torch.tensor([[0.2, 0.7], [0.9, 0.9]]), "fg_logits": fg_logits}
    out = detector_loss(caps, batch, cls_weight=2.0, loc_weight=0.5)
    assert out["classification"].item() == pytest.approx(0.5 * 0.1**2 + 0.2**2, abs=1e-6)
    assert out["localization"].item() == pytest.approx(loc.item())
    assert out["total"].item() == pytest.approx(2.0 * out["classification"].item() + 0.5 * loc.item())
    linear = {"class_logits": torch.tensor([[0.0, 0.0], [5.0, -5.0]]), "fg_logits": fg_logits}
    out = detector_loss(linear, batch)
    assert out["classification"].item() == pytest.approx(math.log(2), abs=1e-6)  # -1 row left out
