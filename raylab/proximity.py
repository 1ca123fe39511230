"""Temporal proximity of frames to the annotated frames of their video: ASL's one Gaussian, two uses.

MGW loss weights (Eq.4): w_i = max_a exp(-(i - a)^2 / (2 sigma^2)), 1 on annotated frames.
APU proximity (Eq.2): D_i = 1 - w_i, with D_i = 1 when the video has no annotation.
Pure numpy: the data layer (clip targets) and the acquisition functions use it without torch.
"""

from __future__ import annotations

import numpy as np

LOSS_WEIGHTINGS = ("mgw", "masking", "interpolation")


def nearest_annotated_distance(frames: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """Distance in frames from each frame to the closest annotated frame of the same video.

    Args:
        frames: int [N] frame indices.
        annotated: int [A] annotated frame indices of the video (any order).

    Returns:
        float64 [N]; +inf everywhere when A = 0.
    """
    frames = np.asarray(frames, dtype=np.int64)
    annotated = np.unique(np.asarray(annotated, dtype=np.int64))
    if annotated.size == 0:
        return np.full(frames.shape, np.inf)
    right = np.clip(np.searchsorted(annotated, frames), 0, annotated.size - 1)
    left = np.clip(right - 1, 0, annotated.size - 1)
    return np.minimum(np.abs(frames - annotated[left]), np.abs(frames - annotated[right])).astype(np.float64)


def mgw_weights(
    frames: np.ndarray, annotated: np.ndarray, sigma: float, weighting: str = "mgw"
) -> np.ndarray:
    """Per-frame loss weights w_i = max_{a in A} exp(-(i - a)^2 / (2 sigma^2)) (ASL Eq.4).

    The max over annotated frames is attained at the nearest one, so w_i = exp(-d_i^2 / (2 sigma^2)).
    Annotated frames get 1. `masking` keeps annotated frames only (the σ → 0 limit) and
    `interpolation` gives every frame weight 1 (the σ → ∞ limit). A video with no annotation gives 0.

    Args:
        frames: int [N] frame indices of a clip.
        annotated: int [A] annotated frames of the same video.
        sigma: Gaussian width in frames (> 0).
        weighting: "mgw" | "masking" | "interpolation".

    Returns:
        float32 [N] weights in [0, 1].
    """
    if weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {LOSS_WEIGHTINGS}, got {weighting!r}")
    d = nearest_annotated_distance(frames, annotated)
    if weighting == "masking":
        w = (d == 0).astype(np.float64)
    elif weighting == "interpolation":
        w = np.isfinite(d).astype(np.float64)
    else:
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        w = np.exp(-np.square(d) / (2.0 * sigma * sigma))  # exp(-inf) = 0 for videos without annotation
    return w.astype(np.float32)


# ---- torch losses of the ASL detector (VideoCapsuleNet: margin / spread loss + per-pixel BCE) ----
