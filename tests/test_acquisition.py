"""Frame acquisition scores (ASL Eq.1-3, Aghdam entropy): hand-computed values and limits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raylab.acquisition.frame import (
    apu_proximity,
    apu_scores,
    foreground_fraction,
    frame_scores,
    frame_uncertainty,
    pixel_entropy,
)
from raylab.proximity import mgw_weights


def probs(*frames):
    """[T, N, P] from per-frame lists of per-pixel trial lists: frames[n][pixel][t]."""
    return np.transpose(np.asarray(frames, dtype=np.float64), (2, 0, 1))


def test_frame_uncertainty_hand_values_with_suppression():
    fg = probs(
        [[0.5, 0.5], [0.05, 0.05]],  # pixel 1 is confident background (mean 0.05 <= 1 - 0.9): dropped
        [[0.8, 0.6], [0.02, 0.04]],  # pixel 0 kept: -log 0.8, -log 0.6
        [[0.3, 0.3], [0.0, 0.0]],  # mean 0.3 kept; P = max(p, 1 - p) = 0.7
    )  # T = 2, N = 3, P = 2
    expected = [1.0, (-math.log(0.8) - math.log(0.6)) / 2 / math.log(2), -math.log(0.7) / math.log(2)]
    np.testing.assert_allclose(frame_uncertainty(fg, tau=0.9), expected, rtol=1e-12)
    np.testing.assert_allclose(foreground_fraction(fg, tau=0.9), [0.5, 0.5, 0.5])
    # a stricter tau (keep only mean > 0.5) drops the 0.3 pixel and the frame scores 0
    assert frame_uncertainty(fg, tau=0.5)[2] == 0.0


def test_frame_without_kept_pixel_is_zero_and_bounds():
    background = np.full((4, 1, 3, 3), 0.01)  # [T, N, H, W]
    assert frame_uncertainty(background)[0] == 0.0
    assert foreground_fraction(background)[0] == 0.0
    rng = np.random.default_rng(0)
    u = frame_uncertainty(rng.random((5, 20, 4, 4)))
    assert np.all((u >= 0) & (u <= 1))
    assert frame_uncertainty(np.full((3, 2, 5), 0.5)) == pytest.approx([1.0, 1.0])  # max uncertainty
    assert frame_uncertainty(np.ones((3, 2, 5))) == pytest.approx([0.0, 0.0])  # certain foreground


def test_hw_and_flat_pixel_layouts_agree():
    rng = np.random.default_rng(1)
    fg = rng.random((3, 4, 2, 5))
    np.testing.assert_array_equal(frame_uncertainty(fg), frame_uncertainty(fg.reshape(3, 4, 10)))
    with pytest.raises(ValueError, match="T_mc"):
        frame_uncertainty(np.zeros((3, 4)))
    with pytest.raises(ValueError, match="tau"):
        frame_uncertainty(fg, tau=0.0)


def test_pixel_entropy_bits_of_the_mean_prediction():
    fg = probs(
        [[0.0, 1.0], [1.0, 1.0]],  # pixel 0 mean 0.5 -> 1 bit; pixel 1 certain -> 0
        [[0.25, 0.25], [0.0, 0.0]],  # H(0.25) = 0.811278 bits; 0 log 0 = 0
    )
    h25 = -(0.25 * math.log2(0.25) + 0.75 * math.log2(0.75))
    np.testing.assert_allclose(pixel_entropy(fg), [0.5, h25 / 2], rtol=1e-12)


def test_frame_scores_columns():
    out = frame_scores(np.full((2, 3, 4), 0.5))
    assert set(out) == {"uncertainty", "entropy", "fg_fraction"}
    np.testing.assert_allclose(out["uncertainty"], 1.0)
    np.testing.assert_allclose(out["entropy"], 1.0)
    np.testing.assert_allclose(out["fg_fraction"], 1.0)


def test_apu_proximity_hand_values_and_mgw():
    frames = np.arange(6)
    d = np.array([2, 1, 0, 1, 2, 3.0])  # nearest of annotated {2}
    expected = 1 - np.exp(-(d**2) / 2.0)
    np.testing.assert_allclose(apu_proximity(frames, [2], sigma=1.0), expected, rtol=1e-12)
    # two annotations: the nearest one counts (the φ mask of Eq.2)
    np.testing.assert_allclose(apu_proximity([0, 3, 5], [5, 1], sigma=1.3)[1], 1 - math.exp(-4 / (2 * 1.69)))
    np.testing.assert_array_equal(apu_proximity(frames, [], sigma=1.3), np.ones(6))  # no annotation
    for ann in ([], [2], [0, 5]):
        np.testing.assert_allclose(
            apu_proximity(frames, ann, 1.3), 1 - mgw_weights(frames, np.asarray(ann, int), 1.3), atol=1e-6
        )
    with pytest.raises(ValueError, match="sigma"):
        apu_proximity(frames, [1], sigma=0)


def test_apu_scores_eq3_and_its_limits():
    u, d = np.array([0.2, 0.9, 0.0]), np.array([1.0, 0.1, 0.5])
    np.testing.assert_allclose(apu_scores(u, d), [0.6, 0.5, 0.25])
    np.testing.assert_allclose(apu_scores(u, d, lam=0.25), 0.25 * u + 0.75 * d)
    np.testing.assert_array_equal(apu_scores(u, d, lam=1.0), u)  # pure uncertainty
    np.testing.assert_array_equal(apu_scores(u, d, lam=0.0), d)  # pure distance
    with pytest.raises(ValueError, match="lam"):
        apu_scores(u, d, lam=1.5)
