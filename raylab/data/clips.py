"""Clip indexes: which frames each clip of a video holds. Pure pandas/numpy, built from the dataset index
(metadata only, a few bytes per clip); the frames themselves are decoded later, clip by clip.

Two samplings:
- `annotated_clips`: for training, clips that contain an annotated frame at a random position.
- `video_clips`: for training the classifier, clips anywhere in every video (its class is known).
- `tile_clips`: for scoring and evaluation, a dense tiling in which every frame of a video is owned by
  exactly one clip (`owned`), overlaps at the end resolved in favour of the earlier clip.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from raylab.data.video import clip_frames

CLIP_COLUMNS = ["video_id", "start", "frames", "owned"]


def tile_video(num_frames: int, length: int, stride: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Dense tiling of one video into clips of `length` frames taken every `stride` frames.

    Each phase p < stride (frames p, p+stride, ...) is cut into consecutive clips; the last clip of a
    phase is shifted back to end on the phase's last frame (it overlaps its predecessor), and a phase
    shorter than a clip is padded by repeating its last frame. A frame is owned by the first clip
    holding it.

    Returns:
        list of (frames int64 [length], owned bool [length]).
    """
    clips = []
    seen = np.zeros(num_frames, dtype=bool)
    for phase in range(min(stride, num_frames)):
        seq = np.arange(phase, num_frames, stride)
        starts = list(range(0, max(len(seq) - length, 0) + 1, length))
        if len(seq) > length and starts[-1] + length < len(seq):
            starts.append(len(seq) - length)
        for s in starts:
            frames = seq[s : s + length]
            frames = np.concatenate([frames, np.repeat(frames[-1:], length - len(frames))])
            owned = np.zeros(length, dtype=bool)
            for j, f in enumerate(frames):  # first clip and first position win
                if not seen[f]:
                    owned[j], seen[f] = True, True
            clips.append((frames, owned))
    return clips


def tile_clips(index: pd.DataFrame, length: int, stride: int) -> pd.DataFrame:
    """Dense tiling of every video of `index` (columns video_id, num_frames); one row per clip."""
    rows = []
    for video_id, n in zip(index["video_id"], index["num_frames"]):
        for frames, owned in tile_video(int(n), length, stride):
            rows.append((video_id, int(frames[0]), frames, owned))
    return pd.DataFrame(rows, columns=CLIP_COLUMNS)


def tile_counts(num_frames, length: int, stride: int) -> np.ndarray:
    """Clips of `tile_video` per video, computed without building them: int64 [V] for num_frames [V].

    The scorer's driver sizes a pool of any size from these (`clip_offsets`) and leaves the tiling
    itself to the tasks that decode the clips.
    """
    n = np.asarray(num_frames, dtype=np.int64)
    counts = np.zeros(n.shape, dtype=np.int64)
    for phase in range(stride):
        frames = np.maximum(n - phase + stride - 1, 0) // stride  # frames of this phase (0 if n <= phase)
        full = np.maximum(frames - length, 0) // length + 1  # the starts 0, length, 2 length, ...
        shifted = (frames > length) & ((full - 1) * length + length < frames)  # a last clip moved back
        counts += np.where(frames > 0, full + shifted, 0)
    return counts


def clip_offsets(num_frames, length: int, stride: int) -> np.ndarray:
    """int64 [V + 1]: the clips of video v in the dense tiling of all videos are offsets[v]..offsets[v+1]-1
    (video order, then `tile_video` order)."""
    return np.concatenate([[0], np.cumsum(tile_counts(num_frames, length, stride))]).astype(np.int64)


def annotated_clips(
    index: pd.DataFrame,
    labelled: Mapping[str, np.ndarray],
    length: int,
    stride: int,
    per_annotation: int = 1,
    seed: int = 0,
    cover: bool = False,
) -> pd.DataFrame:
    """Training clips: `per_annotation` clips around each annotated frame, the frame at a random slot.

    The slot is drawn among those that keep the clip inside the video (any slot when the video is
    shorter than the clip span). Videos without annotation give no clip. Deterministic in `seed`.

    With `cover`, a video's annotated frames are visited in a random order and a frame already held by
    `per_annotation` earlier clips of its video gets no more: every annotated frame is still in a clip,
    but densely labelled videos are not cut into `length` clips per frame (at 100% labels, about
    `length` times fewer clips, each supervising all of its frames).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for video_id, n in zip(index["video_id"], index["num_frames"]):
        n = int(n)
        annotated = np.asarray(labelled.get(video_id, ()), dtype=np.int64)
        held = np.zeros(n, dtype=np.int64)  # clips holding each frame (cover)
        for a in (rng.permutation(annotated) if cover else annotated):
            # slots k with a - k*stride >= 0 and a + (length-1-k)*stride <= n-1
            k_max = min(length - 1, int(a) // stride)
            k_min = max(0, -(-(int(a) + (length - 1) * stride - (n - 1)) // stride))
            for _ in range(per_annotation - (int(held[a]) if cover else 0)):
                k = int(rng.integers(k_min, k_max + 1)) if k_min <= k_max else k_max
                start = int(a) - k * stride
                frames = clip_frames(start, length, stride, n)
                held[np.unique(frames)] += 1
                rows.append((video_id, start, frames, np.ones(length, dtype=bool)))
    return pd.DataFrame(rows, columns=CLIP_COLUMNS)


def video_clips(index: pd.DataFrame, per_video: int, length: int, stride: int, seed: int = 0) -> pd.DataFrame:
    """`per_video` clips of every video of `index` at uniformly random starts (labelled frames or not):
    what teaches the classifier each video's class, which ASL knows for every video."""
    rng = np.random.default_rng(seed)
    rows = []
    for video_id, n in zip(index["video_id"], index["num_frames"]):
        n = int(n)
        last = max(n - 1 - (length - 1) * stride, 0)
        for start in rng.integers(0, last + 1, size=per_video):
            rows.append((video_id, int(start), clip_frames(int(start), length, stride, n),
                         np.ones(length, dtype=bool)))
    return pd.DataFrame(rows, columns=CLIP_COLUMNS)
