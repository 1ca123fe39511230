"""Shared fixtures: one local Ray per test run, and tiny videos written on the fly."""

from __future__ import annotations

import numpy as np
import pytest

from raylab.data.video import write_video


@pytest.fixture(scope="session")
def ray_local():
    """Start Ray once per test run (2 CPUs, no dashboard); tests that need it take this fixture."""
    import ray

    if not ray.is_initialized():
        # address "local": our own Ray, never one another process (a cluster test) started here
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def blob_frames(num_frames: int = 16, height: int = 32, width: int = 64, size: int = 8) -> np.ndarray:
    """A white square moving one pixel right per frame over a black background; uint8 [T, H, W, 3]."""
    frames = np.zeros((num_frames, height, width, 3), dtype=np.uint8)
    for t in range(num_frames):
        y0, x0 = (height - size) // 2, t % (width - size)
        frames[t, y0 : y0 + size, x0 : x0 + size] = 255
    return frames


@pytest.fixture
def one_torch_thread():
    """One CPU thread for torch: fast on a shared 2-core machine, and bit-for-bit repeatable."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_synth_set(tmp_path_factory, kind: str):
    """The tiny SynthActions set of one kind ("spatiotemporal" or "temporal"), generated in a temporary
    folder: (root, meta, index with absolute paths, ground truth)."""
    from raylab.data.annotations import load_dataset
    from raylab.data.synthetic import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, "tiny", seed=0, kinds=(kind,))
    return (out / kind, *load_dataset(out / kind))


def open_tiny_run(tmp_path_factory, pipeline, *overrides: str):
    """(cfg, run dir, RunData, LabelStore) of a new run of `pipeline` on SynthActions generated in a
    temporary folder: the initial labels are in, nothing is trained."""
    from raylab.config import load_config
    from raylab.loop import open_run

    synth = tmp_path_factory.mktemp("synth")
    cfg = load_config(pipeline, [f"data.synth_dir={synth}", *overrides])
    run = tmp_path_factory.mktemp("run")
    data, store = open_run(cfg, run)
    return cfg, run, data, store


@pytest.fixture
def blob_video(tmp_path):
    """Path of a 16-frame 64x32 mp4 of a moving white square, and its frames."""
    frames = blob_frames()
    path = tmp_path / "blob.mp4"
    write_video(path, frames, fps=25)
    return path, frames
