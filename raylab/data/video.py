"""Video reading (decord) and writing (PyAV H.264), behind one small module.

Readers are short-lived: one `decord.VideoReader` per clip request, so no reader outlives the clip it
decodes (decord's `get_batch` is known to grow memory on long-lived readers of long videos).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class VideoError(Exception):
    """A video that cannot be read; `path` and `reason` say which and why."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class VideoInfo:
    num_frames: int
    fps: float
    height: int
    width: int


def _decord():
    try:
        import decord
    except ImportError as e:  # pragma: no cover - decord is a hard dependency
        raise ImportError(
            "decord is required to read videos: `pip install decord` (or `make venv`)"
        ) from e
    decord.bridge.set_bridge("native")
    decord.logging.set_level(decord.logging.QUIET)  # ffmpeg's own lines would reach stderr; errors raise
    return decord


def _open(path: str | Path, height: int = -1, width: int = -1):
    path = Path(path)
    if not path.is_file():
        raise VideoError(path, "file not found")
    if path.stat().st_size == 0:
        raise VideoError(path, "empty file")
    decord = _decord()
    try:
        with _decoder_output_logged():
            return decord.VideoReader(str(path), ctx=decord.cpu(0), height=height, width=width,
                                      num_threads=1)
    except Exception as e:  # decord raises RuntimeError / DECORDError with ffmpeg's message
        raise VideoError(path, "not a video (the decoder cannot open it)") from _logged(path, e)


_capture_lock = threading.Lock()
_capture: dict = {"depth": 0}  # threads decoding at once share one capture of descriptor 2


@contextlib.contextmanager
def _decoder_output_logged() -> Iterator[None]:
    """Descriptor 2 into a temporary file while decord runs, its text to the debug log afterwards: decord
    logs its errors (timestamp, source line, the file) to stderr itself, besides raising them."""
    with _capture_lock:
        if _capture["depth"] == 0:
            sys.stderr.flush()
            _capture["file"], _capture["saved"] = tempfile.TemporaryFile(), os.dup(2)
            os.dup2(_capture["file"].fileno(), 2)
        _capture["depth"] += 1
    try:
        yield
    finally:
        with _capture_lock:
            _capture["depth"] -= 1
            if _capture["depth"] == 0:
                os.dup2(_capture["saved"], 2)
                os.close(_capture["saved"])
                f = _capture.pop("file")
                f.seek(0)
                text = f.read().decode(errors="replace").strip()
                f.close()
                if text:
                    log.debug("decoder output: %s", text)


def _logged(path, e: Exception) -> Exception:
    """The decoder's own message (timestamps, source lines, ffmpeg codes) goes to the debug log, not into
    a reason: reasons are short, stable sentences (quarantine.parquet groups by them)."""
    log.debug("%s: decoder says: %s", path, str(e).strip() or type(e).__name__)
    return e


def probe_video(path: str | Path) -> VideoInfo:
    """Open a video and decode its first and last frames, so that truncated files are caught here.

    Raises:
        VideoError: missing, empty, corrupt, truncated or zero-frame file.
    """
    vr = _open(path)
    n, fps = len(vr), float(vr.get_avg_fps())
    del vr
    if n <= 0:
        raise VideoError(path, "no frames")
    if not np.isfinite(fps) or fps <= 0:
        raise VideoError(path, f"invalid frame rate {fps}")
    height, width = _stored_size(path)
    try:
        read_frames(path, [0, n - 1], size=(height, width))
    except VideoError as e:
        reason = f"truncated: the last frame ({n - 1}) of {n} cannot be decoded"
        raise VideoError(path, reason) from _logged(path, e)
    return VideoInfo(num_frames=n, fps=fps, height=height, width=width)


def _stored_size(path: str | Path) -> tuple[int, int]:
    """(height, width) from the container's stream header (PyAV), without decoding."""
    import av

    try:
        with av.open(str(path)) as container:
            ctx = container.streams.video[0].codec_context
            return int(ctx.height), int(ctx.width)
    except Exception as e:
        raise VideoError(path, "cannot read the stream header") from _logged(path, e)


def clip_frames(start: int, length: int, stride: int, num_frames: int) -> np.ndarray:
    """Frame indices of a clip: start, start+stride, ...; indices past the end repeat the last frame.

    Returns:
        int64 [length]
    """
    if length < 1 or stride < 1:
        raise ValueError(f"clip length and stride must be >= 1, got {length}, {stride}")
    if not 0 <= start < num_frames:
        raise ValueError(f"clip start {start} outside a video of {num_frames} frames")
    idx = start + stride * np.arange(length, dtype=np.int64)
    return np.minimum(idx, num_frames - 1)


def read_frames(
    path: str | Path, frames: Sequence[int], size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode the given frames of one video.

    Args:
        path: video file.
        frames: 0-based frame indices (any order, repeats allowed).
        size: (height, width) to resize to, or None for the stored resolution.

    Returns:
        uint8 [T, H, W, 3] RGB.

    Raises:
        VideoError: the file cannot be read, or a frame index is out of range (names the frame).
    """
    frames = np.asarray(frames, dtype=np.int64)
    h, w = size if size is not None else (-1, -1)
    try:
        return _get_batch(path, frames, h, w)
    except _StrideBug:
        pass
    # decord copies rows with the wrong stride at a few small output widths (8, 16, 24, 48, 72 seen):
    # decode at a width it handles, then resize the width with torch.
    safe_w = max(128, -(-max(w, 1) // 8) * 8)
    out = _get_batch(path, frames, h, safe_w)
    return _resize_width(out, w if w > 0 else _stored_size(path)[1])


class _StrideBug(Exception):
    pass


def _get_batch(path: str | Path, frames: np.ndarray, h: int, w: int) -> np.ndarray:
    vr = _open(path, height=h, width=w)
    n = len(vr)
    bad = frames[(frames < 0) | (frames >= n)]
    if bad.size:
        raise VideoError(path, f"frame {int(bad[0])} out of range (video has {n} frames)")
    try:
        with _decoder_output_logged():
            return vr.get_batch(frames.tolist()).asnumpy()
    except Exception as e:
        if "The size must exactly match" in str(e):
            raise _StrideBug() from e
        raise VideoError(path, f"cannot decode frames {frames.min()}..{frames.max()}") from _logged(path, e)
    finally:
        del vr


def _resize_width(frames: np.ndarray, width: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()  # [T, 3, H, W]
    x = F.interpolate(x, size=(x.shape[2], width), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def read_clip(
    path: str | Path,
    start: int,
    length: int,
    stride: int = 1,
    size: tuple[int, int] | None = None,
    num_frames: int | None = None,
) -> np.ndarray:
    """Decode a clip of `length` frames from `start` every `stride` frames; uint8 [T, H, W, 3]."""
    if num_frames is None:
        num_frames = len(_open(path))
    return read_frames(path, clip_frames(start, length, stride, num_frames), size)


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float, crf: int = 18) -> int:
    """Write RGB uint8 [H, W, 3] frames as an H.264 mp4 (yuv420p, moov atom first); returns frame count.

    H and W must be even (yuv420p). The file is written to a temporary name and renamed, so a
    half-written video never sits under its final name.
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    count = 0
    with av.open(str(tmp), "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = None
        for frame in frames:
            if stream is None:
                height, width = frame.shape[:2]
                if height % 2 or width % 2:
                    raise ValueError(f"{path}: H.264 yuv420p needs even sizes, got {height}x{width}")
                stream = container.add_stream("libx264", rate=_rate(fps))
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.options = {"crf": str(crf), "preset": "veryfast", "tune": "zerolatency"}
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame, dtype=np.uint8), format="rgb24")
            for packet in stream.encode(vf):
                container.mux(packet)
            count += 1
        if stream is None:
            raise ValueError(f"{path}: no frames to write")
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)
    return count


def _rate(fps: float):
    from fractions import Fraction

    return Fraction(fps).limit_denominator(1001)
