"""COCO-style run-length encoding of binary masks (uncompressed counts, column-major).

The counts alternate runs of 0 and 1 over the mask read in Fortran (column-major) order, starting with a
run of zeros (possibly of length 0), exactly as pycocotools' uncompressed RLE.
"""

from __future__ import annotations

import numpy as np


def rle_encode(mask: np.ndarray) -> np.ndarray:
    """Encode a binary mask.

    Args:
        mask: [H, W] array, nonzero = foreground.

    Returns:
        int32 counts, alternating zero / one runs, first run zeros.
    """
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return np.zeros(0, dtype=np.int32)
    # positions where the value changes, plus both ends
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds)
    if flat[0]:
        counts = np.concatenate(([0], counts))
    return counts.astype(np.int32)


def rle_decode(counts: np.ndarray, height: int, width: int) -> np.ndarray:
    """Decode counts into a uint8 [H, W] mask; raises ValueError when counts do not cover H*W."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() != height * width or (counts < 0).any():
        raise ValueError(f"RLE counts sum to {counts.sum()}, expected {height}x{width}={height * width}")
    values = np.arange(counts.size) % 2
    flat = np.repeat(values.astype(np.uint8), counts)
    return flat.reshape((height, width), order="F")


def rle_to_box(counts: np.ndarray, height: int, width: int) -> np.ndarray | None:
    """Tight [x1, y1, x2, y2] box (x2, y2 exclusive) around the foreground, or None when empty."""
    mask = rle_decode(counts, height, width)
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)
