"""Benchmark apu-global selection: 1,000,000 frames in 10,000 videos, 1% budget, on one core.

Also times the naive reference (re-score every candidate after every pick) on a size it can finish
and checks that both pick the same frames with the same scores. The last line printed is JSON:
{"apu_global_1m_s", "naive_speedup", "identical", ...}.

    .venv/bin/python -m benchmarks.select
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd

from raylab.acquisition.select import SelectOptions, _naive_apu_global, apu_global, build_pool, select_frames


def make_pool(num_videos: int, frames_per_video: int, labelled_fraction: float, seed: int = 0):
    """Score table (few distinct U values, so ties happen), 1% labelled, 5% of videos unlabelled."""
    rng = np.random.default_rng(seed)
    ids = [f"video_{i:05d}" for i in range(num_videos)]
    num_frames = {v: frames_per_video for v in ids}
    video = np.repeat(np.arange(num_videos), frames_per_video)
    frame = np.tile(np.arange(frames_per_video), num_videos)
    scores = pd.DataFrame({
        "video_id": np.asarray(ids, dtype=object)[video],
        "frame": frame,
        "uncertainty": rng.integers(0, 50, video.size) / 50.0,
    })
    lab = rng.random(video.size) < labelled_fraction
    lab &= video % 20 != 0  # some videos start with no annotation at all
    labelled = scores.loc[lab, ["video_id", "frame"]]
    return scores, labelled, num_frames


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    opts = SelectOptions()
    scores, labelled, num_frames = make_pool(10_000, 100, 0.01)
    budget = len(scores) // 100
    t_end_to_end = best_of(lambda: select_frames(scores, labelled, num_frames, budget, "apu-global"), 3)
    pool = build_pool(scores, labelled, num_frames)
    t_select = best_of(lambda: apu_global(pool, budget, opts), 3)

    small = make_pool(200, 100, 0.01, seed=1)
    small_pool = build_pool(*small)
    small_budget = len(small[0]) // 100 * 5  # 5%: 1,000 picks
    t_fast = best_of(lambda: apu_global(small_pool, small_budget, opts), 5)
    t0 = time.perf_counter()
    naive = _naive_apu_global(small_pool, small_budget, opts)
    t_naive = time.perf_counter() - t0
    fast = apu_global(small_pool, small_budget, opts)
    identical = bool(np.array_equal(fast[0], naive[0]) and np.array_equal(fast[1], naive[1]))
    print(json.dumps({
        "apu_global_1m_s": round(t_end_to_end, 4),
        "apu_global_1m_select_only_s": round(t_select, 4),
        "naive_size": f"{len(small[0])} frames, {len(small[2])} videos, {small_budget} picks",
        "naive_s": round(t_naive, 3),
        "fast_s_same_size": round(t_fast, 4),
        "naive_speedup": round(t_naive / t_fast, 1),
        "identical": identical,
    }))


if __name__ == "__main__":
    main()
