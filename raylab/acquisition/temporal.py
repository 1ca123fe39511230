"""Video-level acquisition of AL-STAL: TPE (Eq.4), TCI (Eq.5-7), aggregation (Eq.8-10), top-k, as pure numpy.

No Ray, no files, no model: each function maps arrays (or one table) to arrays (or one table).
See docs/alstal.md, "Video scores and selection", for every rule spelled out.

Input convention: the localizer's class distribution p̃ of one video is a float array [T, C] (T temporal
locations, C classes, each row a probability distribution: softmax output, rows sum to 1), or a list of
such arrays, one per feature-pyramid level ([T_l, C], same C on every level). Entropies use the natural
log (nats).

- `tpe`            TPE, Eq.4: s[t] = H(p̃_t), per location of every level, levels concatenated.
- `tci`            TCI, Eq.5-7: s[t] = H(mean of p̃ over [t-r, t+r]) - mean of H over the same window,
                   the window clipped at the ends of its level; O(T·C) with cumulative sums.
- `aggregate`      video score from location scores: "max" (Eq.8), "sum" (Eq.9), "mean-max" (Eq.10).
- `video_scores`   {video_id: p̃} -> table (video_id, score).
- `select_videos`  top-k unlabelled videos by score, or the random baseline.
- `initial_videos` the random initial labelled set (5% of the videos by default, at least one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

METHODS = ("tpe", "tci")
AGGREGATIONS = ("max", "sum", "mean-max")
STRATEGIES = ("top-k", "random")
SUM_TOLERANCE = 1e-4  # |Σ_c p̃_c - 1| allowed per location

# ---------------------------------------------------------------- validation of p̃


def _check_level(p, where: str) -> np.ndarray:
    """float64 [T, C] copy of one level's probabilities; ValueError naming `where` and the location."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] == 0:
        raise ValueError(f"{where}: class probabilities must be [T, C] with C >= 1, got shape {p.shape}")
    problems = (
        (~np.isfinite(p).all(axis=1), "has NaN or infinite probabilities"),
        ((p < 0).any(axis=1), "has negative probabilities"),
        (np.abs(p.sum(axis=1) - 1.0) > SUM_TOLERANCE, "does not sum to 1"),
    )
    for bad, what in problems:
        if bad.any():
            t = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{where} location {t} {what} (row sum {p[t].sum():.6g}, {int(bad.sum())} bad locations; "
                f"rows must be class distributions within {SUM_TOLERANCE}: apply a softmax over classes)"
            )
    return p


def _is_level_list(probs) -> bool:
    return isinstance(probs, (list, tuple)) and len(probs) > 0 and np.ndim(probs[0]) == 2


def _levels(probs, where: str) -> list[np.ndarray]:
    """Validated float64 [T_l, C] arrays of one video: a [T, C] array is one level."""
    if not _is_level_list(probs):
        return [_check_level(probs, where)]
    levels = [_check_level(p, f"{where} level {l}") for l, p in enumerate(probs)]
    classes = {p.shape[1] for p in levels}
    if len(classes) > 1:
        shapes = [p.shape for p in levels]
        raise ValueError(f"{where}: pyramid levels disagree on the number of classes C: shapes {shapes}")
    return levels


def _check_radius(radius) -> int:
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ValueError(f"radius must be an integer >= 0, got {radius!r}")
    return int(radius)


# ---------------------------------------------------------------- location scores (Eq.4-7)


def entropy(p: np.ndarray) -> np.ndarray:
    """H(p) = -Σ_c p_c ln p_c over the last axis, in nats, with 0 ln 0 = 0; float64 [...]."""
    p = np.asarray(p, dtype=np.float64)
    return -(p * np.log(np.maximum(p, np.finfo(np.float64).tiny))).sum(axis=-1)


def _tci_level(p: np.ndarray, r: int) -> np.ndarray:
    """TCI of one level p [T, C]; float64 [T]. Window sums are differences of prefix sums."""
    T = p.shape[0]
    t = np.arange(T)
    lo, hi = np.maximum(t - r, 0), np.minimum(t + r + 1, T)  # window [lo, hi), clipped to the level
    n = (hi - lo).astype(np.float64)  # [T] window sizes: 2r + 1 inside, fewer near the ends
    cum_p = np.concatenate([np.zeros((1, p.shape[1])), np.cumsum(p, axis=0)])  # [T + 1, C]
    cum_h = np.concatenate([[0.0], np.cumsum(entropy(p))])  # [T + 1]
    mean_p = np.maximum(cum_p[hi] - cum_p[lo], 0.0) / n[:, None]  # [T, C] Eq.5; max: rounding below 0
    mean_h = (cum_h[hi] - cum_h[lo]) / n  # [T]
    # Jensen: H(mean) >= mean H, so s >= 0; the clip only removes rounding noise of the prefix sums.
    return np.maximum(entropy(mean_p) - mean_h, 0.0)


def tpe(probs) -> np.ndarray:
    """Temporal Proposal Entropy (AL-STAL Eq.4): s[t] = H(p̃_t) = -Σ_c p̃_c ln p̃_c.

    Args:
        probs: [T, C] class distributions (rows sum to 1), or a list of per-pyramid-level [T_l, C].

    Returns:
        float64 [T] in [0, ln C]; for a list, the levels' scores concatenated in list order
        ([Σ_l T_l]: level 0's locations first). For region-wise aggregation keep the levels apart:
        `[tpe(p) for p in levels]` (see `aggregate`).
    """
    return np.concatenate([entropy(p) for p in _levels(probs, "probs")])


def tci(probs, radius: int) -> np.ndarray:
    """Temporal Context Inconsistency (AL-STAL Eq.5-7) with window radius r.

    s[t] = H(ē_t) - (1/n_t) Σ_{j ∈ W_t} H(p̃_j), ē_t = (1/n_t) Σ_{j ∈ W_t} p̃_j, where the window
    W_t = [max(0, t - r), min(T - 1, t + r)] is clipped at the ends and n_t = |W_t| (2r + 1 inside).
    s >= 0 (Jensen); 0 when every distribution of the window is the same.

    Args:
        probs: [T, C] class distributions, or a list of per-pyramid-level [T_l, C]; the window never
            crosses levels (each level is its own time axis).
        radius: r >= 0 (r = 0 gives all zeros).

    Returns:
        float64 [T], or for a list the levels' scores concatenated in list order. O(T·C).
    """
    r = _check_radius(radius)
    return np.concatenate([_tci_level(p, r) for p in _levels(probs, "probs")])


# ---------------------------------------------------------------- aggregation (Eq.8-10)


def _score_levels(scores) -> list[np.ndarray]:
    is_list = isinstance(scores, (list, tuple)) and len(scores) > 0 and np.ndim(scores[0]) == 1
    levels = scores if is_list else [scores]
    out = [np.asarray(s, dtype=np.float64) for s in levels]
    if any(s.ndim != 1 for s in out):
        raise ValueError(f"scores must be 1-D per level, got shapes {[s.shape for s in out]}")
    if sum(s.size for s in out) == 0:
        raise ValueError("scores: no temporal locations to aggregate")
    if not all(np.isfinite(s).all() for s in out):
        raise ValueError("scores: NaN or infinite location scores")
    return out


def _check_regions(regions) -> int:
    if isinstance(regions, bool) or not isinstance(regions, (int, np.integer)) or regions < 1:
        raise ValueError(f"regions must be an integer >= 1, got {regions!r}")
    return int(regions)


def region_of(num_locations: int, regions: int) -> np.ndarray:
    """Region index of each location: the region holding its centre; int64 [T], non-decreasing.

    Region k covers [k/N_R, (k+1)/N_R) of the level's duration and location t covers
    [t/T, (t+1)/T), so t goes to ⌊(2t + 1) N_R / (2T)⌋ (integer arithmetic, no rounding). Region sizes
    differ by at most one; when T < N_R, N_R - T regions are empty.
    """
    t = np.arange(num_locations, dtype=np.int64)
    return (2 * t + 1) * regions // (2 * max(num_locations, 1))


def mean_max(scores, regions: int = 4) -> float:
    """AL-STAL Eq.10: the mean over the N_R temporal regions of each region's maximum score.

    Args:
        scores: [T] location scores, or a list of per-pyramid-level [T_l]: region k is then the union of
            region k of every level (the same stretch of the video seen at every scale).
        regions: N_R >= 1.

    Returns:
        The mean over the non-empty regions (a region is empty when T < N_R on every level): a short
        video is not penalised for having fewer locations than regions.
    """
    regions = _check_regions(regions)
    best = np.full(regions, -np.inf)  # [N_R] max so far per region, -inf = empty
    for s in _score_levels(scores):
        if s.size == 0:
            continue
        k = region_of(s.size, regions)  # [T_l] non-decreasing
        starts = np.flatnonzero(np.diff(k, prepend=-1))  # first location of each non-empty region
        best[k[starts]] = np.maximum(best[k[starts]], np.maximum.reduceat(s, starts))
    return float(best[np.isfinite(best)].mean())


def aggregate(scores, how: str = "max", regions: int = 4) -> float:
    """Video score from location scores: "max" (Eq.8), "sum" (Eq.9) or "mean-max" (Eq.10, `mean_max`).

    Args:
        scores: [T] location scores, or a list of per-pyramid-level [T_l]. max and sum run over every
            location of every level; mean-max pools region k across levels (see `mean_max`).
        how: one of `AGGREGATIONS`.
        regions: N_R of mean-max (AL-STAL: 4).

    Returns:
        float. ValueError when there is no location or a score is not finite.
    """
    if how == "mean-max":
        return mean_max(scores, regions)
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; known: {list(AGGREGATIONS)}")
    levels = [s for s in _score_levels(scores) if s.size]
    if how == "max":
        return float(max(s.max() for s in levels))
    return float(sum(s.sum() for s in levels))


def video_scores(
    prob_seqs: Mapping, method: str = "tpe", how: str = "sum", radius: int = 1, regions: int = 4
) -> pd.DataFrame:
    """Score every video: location scores by `method`, aggregated by `how`.

    Args:
        prob_seqs: ordered mapping video_id -> [T, C] class distributions or a list of per-level
            [T_l, C]. Every row is checked (finite, >= 0, sums to 1 within 1e-4); errors name the video,
            level and location.
        method: "tpe" (Eq.4) or "tci" (Eq.5-7, with `radius`).
        how: "max", "sum" or "mean-max" (with `regions`); levels stay apart for mean-max.
        radius: TCI window radius r (the paper does not state its value; 1 is our default).
        regions: N_R of mean-max.

    Returns:
        DataFrame with video_id and score (float64), one row per video in the mapping's order.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {list(METHODS)}")
    if how not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {how!r}; known: {list(AGGREGATIONS)}")
    r, regions = _check_radius(radius), _check_regions(regions)
    ids, values = [], []
    for vid, probs in prob_seqs.items():
        levels = _levels(probs, f"video {vid!r}")
        if sum(p.shape[0] for p in levels) == 0:
            raise ValueError(f"video {vid!r}: no temporal locations (empty prediction); rescore or drop it")
        per_level = [entropy(p) if method == "tpe" else _tci_level(p, r) for p in levels]
        ids.append(vid)
        values.append(aggregate(per_level, how, regions))
    return pd.DataFrame({"video_id": pd.Series(ids, dtype=object), "score": np.asarray(values, np.float64)})


# ---------------------------------------------------------------- selection


def _as_pandas(table):
    """A pyarrow Table as a DataFrame; anything else unchanged."""
    return table.to_pandas() if hasattr(table, "to_pandas") and not isinstance(table, pd.DataFrame) else table


def _labelled_ids(labelled) -> set:
    if labelled is None:
        return set()
    labelled = _as_pandas(labelled)
    if isinstance(labelled, pd.DataFrame):
        return set(labelled["video_id"].tolist())
    if isinstance(labelled, str):
        raise ValueError(f"labelled must be a collection of video ids, got the string {labelled!r}")
    return set(labelled)


def _check_count(name: str, k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {k!r}")
    return int(k)


def select_videos(scores, labelled, k: int, strategy: str = "top-k", seed: int = 0) -> pd.DataFrame:
    """Choose the next videos to annotate (AL-STAL Algorithm 1, lines 9-10, or the random baseline).

    Args:
        scores: DataFrame (or pyarrow Table) with video_id and, for top-k, score; one row per video, in
            dataset-index order: that order breaks ties. It defines the pool (random needs no score).
        labelled: video ids already labelled (set, list, or a table with a video_id column; None = none);
            they are never picked. Ids not in `scores` are ignored.
        k: videos to pick (>= 0); a smaller pool is returned whole.
        strategy: "top-k" (highest score first; ties: earlier row) or "random" (uniform without
            replacement, numpy default_rng(seed); draw order).
        seed: random strategy.

    Returns:
        DataFrame with video_id, score (float64: the score ranked by; NaN for random), rank (int64,
        0 = first pick), strategy (str).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {list(STRATEGIES)}")
    k = _check_count("k", k)
    df = _as_pandas(scores)
    needed = ["video_id"] + (["score"] if strategy == "top-k" else [])
    if not isinstance(df, pd.DataFrame) or any(c not in df.columns for c in needed):
        cols = list(df.columns) if isinstance(df, pd.DataFrame) else type(df).__name__
        raise ValueError(f"scores must be a table with columns {needed}, got {cols}")
    ids = df["video_id"].to_numpy(dtype=object)
    dup = pd.Series(ids).duplicated().to_numpy()
    if dup.any():
        raise ValueError(f"scores: video {ids[dup][0]!r} appears more than once")
    pool = np.flatnonzero(~pd.Series(ids).isin(_labelled_ids(labelled)).to_numpy())  # [P] row positions
    if strategy == "random":
        picked = pool[np.random.default_rng(seed).choice(pool.size, size=min(k, pool.size), replace=False)]
        value = np.full(picked.size, np.nan)
    else:
        s = df["score"].to_numpy(dtype=np.float64)
        bad = ~np.isfinite(s)
        if bad.any():
            n_bad = int(bad.sum())
            raise ValueError(f"scores: video {ids[bad][0]!r} has score {s[bad][0]} ({n_bad} not finite)")
        picked = pool[np.lexsort((pool, -s[pool]))][:k]  # by descending score, then row order
        value = s[picked]
    return pd.DataFrame({
        "video_id": pd.Series(ids[picked], dtype=object),
        "score": value.astype(np.float64),
        "rank": np.arange(picked.size, dtype=np.int64),
        "strategy": strategy,
    })


def video_budget(num_videos: int, fraction: float) -> int:
    """Videos in `fraction` of a set of `num_videos`: round(fraction · N), at least 1, at most N.

    The same rounding as the frame budgets of raylab.loop (Python's round: halves to even).
    """
    n = _check_count("num_videos", num_videos)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return min(n, max(1, int(round(fraction * n))))


def initial_videos(video_ids: Sequence | Iterable, fraction: float = 0.05, seed: int = 0) -> list:
    """The random initial labelled set: `video_budget(N, fraction)` videos drawn uniformly.

    Args:
        video_ids: every candidate video id, in dataset-index order (no duplicates, at least one).
        fraction: share of the videos (AL-STAL: 0.05).
        seed: numpy default_rng seed.

    Returns:
        The chosen ids, in dataset-index order.
    """
    ids = list(video_ids)
    if not ids:
        raise ValueError("initial_videos: no videos to choose from")
    dup = pd.Series(ids, dtype=object).duplicated().to_numpy()
    if dup.any():
        raise ValueError(f"initial_videos: video {ids[int(np.flatnonzero(dup)[0])]!r} appears more than once")
    picks = np.random.default_rng(seed).choice(len(ids), size=video_budget(len(ids), fraction), replace=False)
    return [ids[i] for i in np.sort(picks)]
