"""Frame-level acquisition scores of ASL (Eq.1-3) and the Aghdam entropy baseline, as pure numpy.

No Ray, no files, no model: each function maps arrays to arrays.

MC-dropout input convention (baal's, with the trial axis FIRST): `fg_probs` holds per-pixel foreground
probabilities of shape [T, N, P] (T trials, N frames, P pixels) or [T, N, H, W]; every trailing axis
after the frame axis is a pixel axis.

- `frame_uncertainty`  U_i, ASL Eq.1 with non-activity suppression τ, divided by ln 2 so U ∈ [0, 1].
- `foreground_fraction` fraction of pixels kept by the suppression (carried in the score table).
- `pixel_entropy`      binary entropy (bits) of the mean prediction, averaged over all pixels (Aghdam).
- `apu_proximity`      D_i, ASL Eq.2: 1 - exp(-(i - a)^2 / (2σ^2)), a = nearest annotated frame.
- `apu_scores`         S_i, ASL Eq.3: λ U_i + (1 - λ) D_i.
"""

from __future__ import annotations

import numpy as np

from raylab.proximity import nearest_annotated_distance

LN2 = float(np.log(2.0))


def _trials_frames_pixels(fg_probs: np.ndarray) -> np.ndarray:
    """float64 [T, N, P] view of [T, N, P] or [T, N, H, W] probabilities."""
    p = np.asarray(fg_probs, dtype=np.float64)
    if p.ndim < 3:
        raise ValueError(
            f"fg_probs must be [T_mc, N_frames, P_pixels] or [T_mc, N_frames, H, W], got shape {p.shape}"
        )
    return p.reshape(p.shape[0], p.shape[1], -1)


def kept_pixels(fg_probs: np.ndarray, tau: float = 0.9) -> np.ndarray:
    """Non-activity suppression: a pixel is kept when its mean foreground probability exceeds 1 - τ.

    Pixels the model calls background with confidence above τ (mean p <= 1 - τ) are ignored.

    Args:
        fg_probs: [T, N, P] or [T, N, H, W] foreground probabilities in [0, 1].
        tau: background confidence threshold in (0, 1].

    Returns:
        bool [N, P] (pixels flattened).
    """
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    return _trials_frames_pixels(fg_probs).mean(axis=0) > 1.0 - tau


def foreground_fraction(fg_probs: np.ndarray, tau: float = 0.9) -> np.ndarray:
    """Fraction of each frame's pixels kept by the suppression; float64 [N] in [0, 1]."""
    return kept_pixels(fg_probs, tau).mean(axis=-1)


def frame_uncertainty(fg_probs: np.ndarray, tau: float = 0.9) -> np.ndarray:
    """Per-frame uncertainty U_i (ASL Eq.1 with non-activity suppression), normalised by ln 2.

    For a kept pixel (see `kept_pixels`) and trial t the uncertainty is -log P with P = max(p, 1 - p),
    the probability of the label the model predicts; it lies in [0, ln 2]. U_i is the mean over kept
    pixels and trials divided by ln 2, so U ∈ [0, 1] whatever the rest of the pool looks like. A frame
    with no kept pixel has U = 0.

    Args:
        fg_probs: [T, N, P] or [T, N, H, W] foreground probabilities (trial axis first).
        tau: suppression threshold (ASL: 0.9).

    Returns:
        float64 [N].
    """
    p = _trials_frames_pixels(fg_probs)  # [T, N, P]
    keep = kept_pixels(p, tau)  # [N, P]
    nll = -np.log(np.maximum(p, 1.0 - p))  # [T, N, P], in [0, ln 2]
    total = (nll * keep).sum(axis=(0, 2))  # [N]
    count = keep.sum(axis=-1) * p.shape[0]  # [N] kept (pixel, trial) pairs
    return np.where(count > 0, total / np.maximum(count, 1) / LN2, 0.0)


def pixel_entropy(fg_probs: np.ndarray) -> np.ndarray:
    """Aghdam-style frame entropy: binary entropy of the MC-mean prediction, mean over ALL pixels.

    H(p̄) = -p̄ log2 p̄ - (1 - p̄) log2(1 - p̄) with p̄ the mean over trials; in bits, so in [0, 1]
    (0 log 0 = 0). No non-activity suppression: this is the baseline as published.

    Args:
        fg_probs: [T, N, P] or [T, N, H, W] foreground probabilities (trial axis first).

    Returns:
        float64 [N].
    """
    p = _trials_frames_pixels(fg_probs).mean(axis=0)  # [N, P]
    tiny = np.finfo(np.float64).tiny
    h = -(p * np.log2(np.maximum(p, tiny)) + (1.0 - p) * np.log2(np.maximum(1.0 - p, tiny)))
    return h.mean(axis=-1)


def frame_scores(fg_probs: np.ndarray, tau: float = 0.9) -> dict[str, np.ndarray]:
    """All per-frame scores of one batch of frames, as the score table carries them.

    Returns:
        {"uncertainty": U [N], "entropy": bits [N], "fg_fraction": [N]}, float64.
    """
    return {
        "uncertainty": frame_uncertainty(fg_probs, tau),
        "entropy": pixel_entropy(fg_probs),
        "fg_fraction": foreground_fraction(fg_probs, tau),
    }


def apu_proximity(frames: np.ndarray, annotated: np.ndarray, sigma: float = 1.3) -> np.ndarray:
    """ASL Eq.2: D_i = 1 - exp(-(i - a)^2 / (2σ^2)), a = the annotated frame of the video nearest to i.

    D = 0 on an annotated frame, rises towards 1 away from annotations, and is 1 everywhere in a video
    with no annotation. This is 1 - `raylab.proximity.mgw_weights(frames, annotated, sigma, "mgw")`,
    computed in float64 (the loss weights are float32) from the same nearest-annotation search.

    Args:
        frames: int [N] frame indices of one video.
        annotated: int [A] annotated frames of the same video (any order; A may be 0).
        sigma: Gaussian width in frames (> 0; ASL: 1.3).

    Returns:
        float64 [N] in [0, 1].
    """
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    d = nearest_annotated_distance(frames, annotated)  # +inf without annotation -> exp(-inf) = 0
    return 1.0 - np.exp(-np.square(d) / (2.0 * sigma * sigma))


def apu_scores(uncertainty: np.ndarray, proximity: np.ndarray, lam: float = 0.5) -> np.ndarray:
    """ASL Eq.3: S_i = λ U_i + (1 - λ) D_i (λ = 1: pure uncertainty, λ = 0: pure distance).

    Args:
        uncertainty: U [N] in [0, 1] (`frame_uncertainty`).
        proximity: D [N] in [0, 1] (`apu_proximity`).
        lam: weight λ in [0, 1] (ASL: 0.5).

    Returns:
        float64 [N].
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    return lam * np.asarray(uncertainty, dtype=np.float64) + (1.0 - lam) * np.asarray(proximity, np.float64)
