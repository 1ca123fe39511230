"""AL-STAL video scores and selection: hand-computed TPE / TCI / aggregation values, selection, errors."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raylab.acquisition.temporal import (
    aggregate,
    entropy,
    initial_videos,
    mean_max,
    region_of,
    select_videos,
    tci,
    tpe,
    video_budget,
    video_scores,
)

LN2, LN3 = math.log(2), math.log(3)
COLUMNS = ["video_id", "score", "rank", "strategy"]


def random_probs(rng: np.random.Generator, T: int, C: int, sharp: float = 3.0) -> np.ndarray:
    """[T, C] softmax of random logits (some rows near one-hot when sharp is large)."""
    z = np.exp(sharp * rng.standard_normal((T, C)))
    return z / z.sum(axis=1, keepdims=True)


def tci_loop(p: np.ndarray, r: int) -> np.ndarray:
    """Eq.5-7 location by location, the window clipped at the ends: the reference for `tci`."""
    T = len(p)
    out = np.empty(T)
    for t in range(T):
        window = p[max(0, t - r) : min(T, t + r + 1)]
        out[t] = entropy(window.mean(axis=0)) - np.mean([entropy(q) for q in window])
    return out


# ---------------------------------------------------------------- TPE (Eq.4)


@pytest.mark.parametrize("C", [2, 3, 7])
def test_tpe_of_uniform_is_log_c_and_of_one_hot_is_zero(C):
    probs = np.vstack([np.full(C, 1 / C), np.eye(C)])  # [1 + C, C]
    np.testing.assert_allclose(tpe(probs), [math.log(C)] + [0.0] * C, atol=1e-15)


def test_tpe_hand_value_and_pyramid_levels_concatenated_in_order():
    level0 = [[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]]
    level1 = [[0.25, 0.25, 0.5]]
    h = 1.5 * LN2  # -(1/2 ln 1/2 + 2 · 1/4 ln 1/4) = 1/2 ln 2 + ln 2
    np.testing.assert_allclose(tpe(level0), [h, 0.0])
    np.testing.assert_allclose(tpe([np.array(level0), np.array(level1)]), [h, 0.0, h])


# ---------------------------------------------------------------- TCI (Eq.5-7)


def test_tci_is_zero_for_a_constant_distribution():
    p = np.tile([0.3, 0.7], (9, 1))  # [9, 2]
    for r in (0, 1, 2, 20):
        np.testing.assert_allclose(tci(p, r), 0.0, atol=1e-12)


def test_tci_two_disagreeing_neighbours_by_hand():
    # r = 1, T = 2: both windows are clipped to {0, 1}: H([1/2, 1/2]) - (0 + 0) / 2 = ln 2.
    # (The paper's unclipped 1/(2r+1) would give something else; we average over the 2 real neighbours.)
    np.testing.assert_allclose(tci([[1.0, 0.0], [0.0, 1.0]], 1), [LN2, LN2])


def test_tci_window_clipping_at_the_ends_by_hand():
    p = [[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]
    # t=0: window {0,1} -> mean [1/2, 1/2] -> ln 2.    t=1: {0,1,2} -> [2/3, 1/3].
    # t=2: {1,2,3} -> [2/3, 1/3].                        t=3: window {2,3} -> [1, 0] -> 0.
    h23 = LN3 - 2 / 3 * LN2  # H([2/3, 1/3]); every p̃_j is one-hot, so the mean entropy term is 0
    np.testing.assert_allclose(tci(p, 1), [LN2, h23, h23, 0.0], atol=1e-15)
    # r = 2: t=0 sees {0,1,2} -> [2/3, 1/3]; t=3 sees {1,2,3} -> [2/3, 1/3]; t=1, 2 see all 4 -> [3/4, 1/4]
    h34 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    np.testing.assert_allclose(tci(p, 2), [h23, h34, h34, h23], atol=1e-15)


def test_tci_subtracts_the_mean_entropy_of_the_window():
    p = [[0.5, 0.5], [1.0, 0.0]]  # r=1: mean [3/4, 1/4] at both locations; mean H = ln 2 / 2
    h34 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    np.testing.assert_allclose(tci(p, 1), [h34 - LN2 / 2] * 2)


def test_tci_windows_never_cross_pyramid_levels():
    level0 = np.array([[1.0, 0.0], [1.0, 0.0]])
    level1 = np.array([[0.0, 1.0], [0.0, 1.0]])
    np.testing.assert_allclose(tci([level0, level1], 1), 0.0, atol=1e-15)  # constant within each level
    np.testing.assert_allclose(tci(np.vstack([level0, level1]), 1)[1:3], [LN3 - 2 / 3 * LN2] * 2)


@settings(max_examples=60, deadline=None)
@given(
    T=st.integers(1, 40),
    C=st.integers(1, 6),
    r=st.integers(0, 8),
    sharp=st.sampled_from([0.1, 3.0, 30.0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_tci_cumulative_sums_equal_the_direct_loop_and_are_non_negative(T, C, r, sharp, seed):
    p = random_probs(np.random.default_rng(seed), T, C, sharp)
    s = tci(p, r)
    np.testing.assert_allclose(s, tci_loop(p, r), rtol=1e-9, atol=1e-12)
    assert s.shape == (T,) and (s >= 0).all()  # Jensen: H(mean) >= mean H


def test_tci_of_a_long_sequence_stays_exact():
    p = random_probs(np.random.default_rng(1), 20_000, 20)
    s = tci(p, 3)
    idx = np.r_[0:5, 9_998:10_003, 19_995:20_000]
    window = [p[max(0, t - 3) : t + 4] for t in idx]
    ref = [entropy(w.mean(0)) - entropy(w).mean() for w in window]
    np.testing.assert_allclose(s[idx], ref, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- aggregation (Eq.8-10)


def test_max_and_sum():
    s = np.array([0.2, 1.5, 0.0, 0.7])
    assert aggregate(s, "max") == 1.5
    assert aggregate(s, "sum") == pytest.approx(2.4)
    levels = [s, np.array([2.0, 0.1])]  # over every location of every level
    assert aggregate(levels, "max") == 2.0
    assert aggregate(levels, "sum") == pytest.approx(4.5)


def test_region_split_is_by_location_centre():
    # T = 10, N_R = 4: location t goes to ⌊(2t + 1)·4 / 20⌋ -> sizes 2, 3, 2, 3
    assert region_of(10, 4).tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3]
    assert region_of(8, 4).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert region_of(2, 4).tolist() == [1, 3]  # T < N_R: regions 0 and 2 are empty
    for T in range(1, 50):
        for R in range(1, 9):
            sizes = np.bincount(region_of(T, R), minlength=R)
            assert sizes.sum() == T and sizes.max() - sizes[sizes > 0].min() <= 1


def test_mean_max_with_uneven_regions_by_hand():
    s = np.array([5.0, 1.0, 0.0, 2.0, 9.0, 3.0, 4.0, 8.0, 6.0, 7.0])  # T = 10
    # regions {0,1} {2,3,4} {5,6} {7,8,9}: maxima 5, 9, 4, 8
    assert mean_max(s, 4) == pytest.approx((5 + 9 + 4 + 8) / 4)
    assert aggregate(s, "mean-max", regions=4) == pytest.approx(6.5)
    assert aggregate(s, "mean-max", regions=1) == 9.0  # one region: plain max
    assert aggregate(s, "mean-max", regions=10) == pytest.approx(s.mean())  # one location per region


def test_mean_max_skips_empty_regions_when_t_is_below_n_r():
    assert mean_max([3.0, 1.0], 4) == 2.0  # regions 1 and 3 hold one location each; 0 and 2 are empty
    assert mean_max([4.0], 4) == 4.0


def test_mean_max_pools_each_region_across_pyramid_levels():
    fine = np.array([0.0, 1.0, 2.0, 3.0])  # one location per region
    coarse = np.array([10.0, 0.0])  # location 0 -> region 1, location 1 -> region 3
    assert mean_max([fine, coarse], 4) == pytest.approx((0 + 10 + 2 + 3) / 4)


@pytest.mark.parametrize(
    "scores, how, regions, match",
    [
        ([], "max", 4, "no temporal locations"),
        ([1.0, np.nan], "sum", 4, "NaN or infinite"),
        ([1.0], "median", 4, "unknown aggregation"),
        ([1.0], "mean-max", 0, "regions must be an integer >= 1"),
        (np.ones((2, 2)), "max", 4, "1-D"),
    ],
)
def test_aggregate_errors(scores, how, regions, match):
    with pytest.raises(ValueError, match=match):
        aggregate(scores, how, regions)


# ---------------------------------------------------------------- video_scores


def test_video_scores_by_hand_in_mapping_order():
    seqs = {
        "b": [[1.0, 0.0], [0.0, 1.0]],  # TPE 0, 0; TCI(r=1) ln 2, ln 2
        "a": [[0.5, 0.5], [0.5, 0.5]],  # TPE ln 2, ln 2; TCI 0, 0
    }
    out = video_scores(seqs, "tpe", "sum")
    assert list(out.columns) == ["video_id", "score"] and out["video_id"].tolist() == ["b", "a"]
    np.testing.assert_allclose(out["score"], [0.0, 2 * LN2], atol=1e-15)
    np.testing.assert_allclose(video_scores(seqs, "tci", "max", radius=1)["score"], [LN2, 0.0], atol=1e-12)
    assert video_scores({}, "tci", "mean-max").shape == (0, 2)


def test_video_scores_keep_pyramid_levels_apart():
    fine = np.array([[1, 0], [1, 0], [0.5, 0.5], [1, 0]], dtype=float)  # TPE 0, 0, ln 2, 0
    coarse = np.array([[0.5, 0.5], [1, 0]], dtype=float)  # TPE ln 2 (region 1), 0 (region 3)
    out = video_scores({"v": [fine, coarse]}, "tpe", "mean-max", regions=4)
    assert out["score"].iloc[0] == pytest.approx((0 + LN2 + LN2 + 0) / 4)
    assert video_scores({"v": [fine, coarse]}, "tpe", "sum")["score"].iloc[0] == pytest.approx(2 * LN2)


@pytest.mark.parametrize(
    "probs, match",
    [
        ([[0.5, 0.5], [0.6, 0.5]], r"video 'v' location 1 does not sum to 1"),
        ([[0.5, 0.5], [np.nan, 1.0]], r"video 'v' location 1 has NaN"),
        ([[1.2, -0.2]], r"video 'v' location 0 has negative"),
        ([np.eye(2), [[0.5, 0.4]]], r"video 'v' level 1 location 0 does not sum to 1"),
        ([np.eye(2), np.eye(3)], r"video 'v': pyramid levels disagree"),
        ([0.5, 0.5], r"video 'v': class probabilities must be \[T, C\]"),
        (np.zeros((0, 3)), r"video 'v': no temporal locations"),
    ],
)
def test_video_scores_errors_name_the_video(probs, match):
    with pytest.raises(ValueError, match=match):
        video_scores({"v": probs}, "tpe", "max")


def test_probabilities_within_tolerance_are_accepted():
    assert tpe([[0.5, 0.5 + 9e-5]]).shape == (1,)
    with pytest.raises(ValueError, match="does not sum to 1"):
        tpe([[0.5, 0.5 + 2e-4]])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "bald"}, "unknown method"),
        ({"how": "min"}, "unknown aggregation"),
        ({"method": "tci", "radius": -1}, "radius must be an integer >= 0"),
        ({"method": "tci", "radius": 1.5}, "radius must be an integer >= 0"),
        ({"regions": 0}, "regions must be an integer >= 1"),
    ],
)
def test_video_scores_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        video_scores({"v": np.eye(2)}, **kwargs)


# ---------------------------------------------------------------- selection


SCORES = pd.DataFrame({"video_id": ["v0", "v1", "v2", "v3", "v4"], "score": [0.5, 0.9, 0.5, 0.9, 0.1]})


def test_top_k_ties_follow_table_order_and_labelled_videos_are_excluded():
    out = select_videos(SCORES, labelled=set(), k=4)
    assert list(out.columns) == COLUMNS
    assert out["video_id"].tolist() == ["v1", "v3", "v0", "v2"]  # 0.9 tie: v1 first; 0.5 tie: v0 first
    assert out["score"].tolist() == [0.9, 0.9, 0.5, 0.5]
    assert out["rank"].tolist() == [0, 1, 2, 3] and (out["strategy"] == "top-k").all()
    out = select_videos(SCORES, labelled=["v1", "v0", "not-scored"], k=2)
    assert out["video_id"].tolist() == ["v3", "v2"]


def test_top_k_ties_use_row_order_not_names():
    scores = pd.DataFrame({"video_id": ["z", "a", "m"], "score": [1.0, 1.0, 1.0]})
    assert select_videos(scores, None, 3)["video_id"].tolist() == ["z", "a", "m"]
    ids = [f"v{i}" for i in np.random.default_rng(0).permutation(300)]  # long: unstable sorts show
    many = pd.DataFrame({"video_id": ids, "score": np.tile([0.0, 1.0, 0.5], 100)})
    out = select_videos(many, set(ids[:30]), k=300)
    expected = [v for x in (1.0, 0.5, 0.0) for v, y in zip(ids[30:], many["score"][30:]) if y == x]
    assert out["video_id"].tolist() == expected


def test_k_beyond_the_pool_returns_the_pool_and_k_zero_nothing():
    out = select_videos(SCORES, {"v4"}, k=100)
    assert out["video_id"].tolist() == ["v1", "v3", "v0", "v2"]
    empty = select_videos(SCORES, None, k=0)
    assert list(empty.columns) == COLUMNS and len(empty) == 0
    assert len(select_videos(SCORES, set(SCORES["video_id"]), k=3, strategy="random")) == 0


def test_labelled_may_be_a_table_and_scores_a_pyarrow_table():
    labelled = pd.DataFrame({"video_id": ["v1", "v1"], "frame": [-1, -1]})
    out = select_videos(pa.Table.from_pandas(SCORES), labelled, k=1)
    assert out["video_id"].tolist() == ["v3"]


def test_random_is_reproducible_uniform_and_skips_labelled():
    ids = [f"v{i}" for i in range(50)]
    pool = pd.DataFrame({"video_id": ids})  # random needs no score column
    a = select_videos(pool, {"v0", "v1"}, k=10, strategy="random", seed=7)
    b = select_videos(pool, {"v0", "v1"}, k=10, strategy="random", seed=7)
    c = select_videos(pool, {"v0", "v1"}, k=10, strategy="random", seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert a["video_id"].tolist() != c["video_id"].tolist()
    assert not {"v0", "v1"} & set(a["video_id"]) and a["video_id"].is_unique
    assert a["score"].isna().all() and (a["strategy"] == "random").all()
    draws = pd.concat([select_videos(pool, None, 5, "random", s) for s in range(1000)])
    counts = draws["video_id"].value_counts()
    assert len(counts) == 50 and counts.min() > 50 and counts.max() < 150  # expected 100 each, sd ~9.5


@pytest.mark.parametrize(
    "scores, k, strategy, match",
    [
        (SCORES.assign(score=[0.1, np.nan, 0.2, 0.3, 0.4]), 1, "top-k", r"video 'v1' has score nan"),
        (pd.DataFrame({"video_id": ["a", "b", "a"], "score": [1.0, 2.0, 3.0]}), 1, "top-k", "'a' appears"),
        (SCORES[["video_id"]], 1, "top-k", r"columns \['video_id', 'score'\]"),
        (SCORES, -1, "top-k", "k must be an integer >= 0"),
        (SCORES, 2.0, "top-k", "k must be an integer >= 0"),
        (SCORES, 1, "bottom-k", "unknown strategy"),
    ],
)
def test_select_videos_errors(scores, k, strategy, match):
    with pytest.raises(ValueError, match=match):
        select_videos(scores, None, k, strategy)


def test_select_videos_rejects_a_bare_string_as_labelled():
    with pytest.raises(ValueError, match="collection of video ids"):
        select_videos(SCORES, "v1", 1)


# ---------------------------------------------------------------- initial set and budgets


@pytest.mark.parametrize("n, fraction, expected", [(100, 0.05, 5), (10, 0.05, 1), (1, 0.05, 1), (41, 0.05, 2),
                                                   (7, 1.0, 7), (200, 0.25, 50)])
def test_video_budget(n, fraction, expected):
    assert video_budget(n, fraction) == expected


def test_initial_videos_reproducible_in_index_order_at_least_one():
    ids = [f"vid{i:03d}" for i in range(100)]
    a = initial_videos(ids, 0.05, seed=3)
    assert a == initial_videos(ids, 0.05, seed=3) and len(a) == 5
    assert a == sorted(a, key=ids.index) and len(set(a)) == 5 and set(a) <= set(ids)
    assert a != initial_videos(ids, 0.05, seed=4)
    assert len(initial_videos(ids[:3], 0.05, seed=0)) == 1


@pytest.mark.parametrize(
    "ids, fraction, match",
    [([], 0.05, "no videos"), (["a", "b", "a"], 0.5, "'a' appears more"), (["a"], 0.0, "fraction"),
     (["a"], 1.5, "fraction")],
)
def test_initial_videos_errors(ids, fraction, match):
    with pytest.raises(ValueError, match=match):
        initial_videos(ids, fraction)
