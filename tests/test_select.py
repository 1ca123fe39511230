"""Selection strategies: exact small cases with ties, budget rules, errors, and apu-global == naive."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raylab.acquisition.select import STRATEGIES, _naive_apu_global, select_frames

COLUMNS = ["video_id", "frame", "score", "rank", "strategy"]


def score_table(u: dict[str, list[float]], entropy: dict[str, list[float]] | None = None) -> pd.DataFrame:
    """One row per frame 0..len-1 of each video."""
    rows = [(v, f, x) for v, us in u.items() for f, x in enumerate(us)]
    df = pd.DataFrame(rows, columns=["video_id", "frame", "uncertainty"])
    if entropy is not None:
        df["entropy"] = [x for v in u for x in entropy[v]]
    return df


def labels(*pairs) -> pd.DataFrame:
    return pd.DataFrame(list(pairs), columns=["video_id", "frame"])


def picks(df: pd.DataFrame) -> list[tuple[str, int]]:
    return list(zip(df["video_id"], df["frame"].tolist()))


def d(dist: float, sigma: float = 1.3) -> float:
    return 1 - math.exp(-(dist**2) / (2 * sigma**2))


# three videos: v0 annotated at 0, v1 annotated at 2 (U all 0.5), v2 unannotated with U = 0
U3 = {"v0": [0.1, 0.9, 0.2, 0.3, 0.1], "v1": [0.5] * 5, "v2": [0.0] * 5}
NF3 = {"v0": 5, "v1": 5, "v2": 5}
LAB3 = labels(("v0", 0), ("v1", 2))


def test_apu_global_exact_small_case_with_rescoring_and_ties():
    out = select_frames(score_table(U3), LAB3, NF3, budget=6, strategy="apu-global")
    assert list(out.columns) == COLUMNS
    # S = U/2 + D/2. v0 f3: 0.15 + D(3)/2 is the max; v1 f0 and f4 tie (D(2)) -> lower frame first;
    # v0 f1 (D(1)); then v2 (D = 1, U = 0: S = 0.5 on every frame) at frame 0, re-scored: f0 now
    # annotated so v2 f4 = D(4)/2 beats v0 f4 whose nearest annotation (f3) is 1 away.
    assert picks(out) == [("v0", 3), ("v1", 0), ("v1", 4), ("v0", 1), ("v2", 0), ("v2", 4)]
    np.testing.assert_allclose(
        out["score"], [0.15 + d(3) / 2, 0.25 + d(2) / 2, 0.25 + d(2) / 2, 0.45 + d(1) / 2, 0.5, d(4) / 2]
    )
    assert out["rank"].tolist() == list(range(6))
    assert (out["strategy"] == "apu-global").all()


def test_apu_global_ties_follow_dataset_index_order_not_names():
    scores = score_table({"b": [0.5] * 3, "a": [0.5] * 3})
    out = select_frames(scores, None, {"b": 3, "a": 3}, budget=3, strategy="apu-global")
    # every frame scores 0.75: video "b" first (index order), lowest frame; after the pick, b's other
    # frames are near an annotation so "a" frame 0 comes next, then b's frame 2 (farthest from b0).
    assert picks(out) == [("b", 0), ("a", 0), ("b", 2)]


def test_lambda_limits():
    scores = score_table(U3)
    pure_u = select_frames(scores, LAB3, NF3, budget=3, strategy="apu-global", lam=1.0)
    assert picks(pure_u) == [("v0", 1), ("v1", 0), ("v1", 1)]  # = Gal's top U
    pure_d = select_frames(scores, LAB3, NF3, budget=1, strategy="apu-global", lam=0.0)
    assert picks(pure_d) == [("v2", 0)]  # the video without annotation is farthest from everything


def test_frames_missing_from_scores_are_not_candidates():
    scores = score_table({"v": [0.0, 0.0, 0.0]}).iloc[[0, 2]]
    out = select_frames(scores, None, {"v": 5}, budget=10, strategy="apu-global")
    assert sorted(out["frame"]) == [0, 2]


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_budget_zero_and_budget_larger_than_pool(strategy):
    scores = score_table(U3, entropy={v: [0.5] * 5 for v in U3})
    empty = select_frames(scores, LAB3, NF3, budget=0, strategy=strategy)
    assert list(empty.columns) == COLUMNS and len(empty) == 0
    out = select_frames(scores, LAB3, NF3, budget=100, strategy=strategy, min_gap=1)
    assert sorted(picks(out)) == sorted(set(picks(scores)) - set(picks(LAB3)))  # every candidate, once
    assert out["rank"].tolist() == list(range(13))


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_deterministic_and_accepts_pyarrow(strategy):
    scores = score_table(U3, entropy={v: [0.1, 0.7, 0.3, 0.7, 0.2] for v in U3})
    a = select_frames(scores, LAB3, NF3, budget=7, strategy=strategy, seed=3)
    b = select_frames(pa.Table.from_pandas(scores), pa.Table.from_pandas(LAB3), NF3, 7, strategy, seed=3)
    pd.testing.assert_frame_equal(a, b)


def test_random_uses_seed_and_only_candidates():
    scores = score_table({f"v{i}": [0.0] * 20 for i in range(5)})
    nf = {f"v{i}": 20 for i in range(5)}
    lab = labels(("v0", 0), ("v3", 7))
    a = select_frames(scores, lab, nf, 30, "random", seed=1)
    assert len(set(picks(a))) == 30 and not set(picks(a)) & set(picks(lab))
    assert a["score"].isna().all()
    pd.testing.assert_frame_equal(a, select_frames(scores, lab, nf, 30, "random", seed=1))
    assert picks(a) != picks(select_frames(scores, lab, nf, 30, "random", seed=2))


def test_apu_local_budget_split():
    # 3 videos with candidates, budget 7: floor(7/3) = 2 greedy picks per video in index order, then 1
    out = select_frames(score_table(U3), LAB3, NF3, budget=7, strategy="apu-local")
    assert [v for v, _ in picks(out)[:6]] == ["v0", "v0", "v1", "v1", "v2", "v2"]
    assert picks(out)[:6] == [("v0", 3), ("v0", 1), ("v1", 0), ("v1", 4), ("v2", 0), ("v2", 4)]
    # remainder by apu-global: v1 f1 and f3 tie at 0.25 + D(1)/2 = 0.378 (> v2 f2 at D(2)/2 = 0.347)
    assert picks(out)[6] == ("v1", 1)
    np.testing.assert_allclose(out["score"].iloc[6], 0.25 + d(1) / 2)
    # a video with fewer candidates than its share: the shortfall is spent globally
    short = select_frames(score_table({"a": [0.1] * 2, "b": [0.1] * 10}), labels(("a", 0)),
                          {"a": 2, "b": 10}, budget=6, strategy="apu-local")
    assert len(short) == 6 and picks(short).count(("a", 1)) == 1
    assert [v for v, _ in picks(short)[:4]] == ["a", "b", "b", "b"]


def test_equidistant_fills_the_largest_gaps():
    # v0: n 5, labelled 0 -> gap (0, 5) of size 5; v1: labelled 2 -> gaps (-1, 2), (2, 5) of size 3;
    # v2: none -> (-1, 5) of size 6
    out = select_frames(score_table(U3), LAB3, NF3, budget=5, strategy="equidistant")
    # v2 mid 2; then v0 (0,5) mid 2.5 -> 2 (lower); then the size-3 gaps in video order: v0 (2,5) -> 3,
    # v1 (-1,2) -> 0 (nearest 0.5, lower), v1 (2,5) -> 3
    assert picks(out) == [("v2", 2), ("v0", 2), ("v0", 3), ("v1", 0), ("v1", 3)]
    assert out["score"].isna().all()
    long = select_frames(score_table({"v": [0.0] * 100}), None, {"v": 100}, 4, "equidistant")
    assert long["frame"].tolist() == [49, 74, 24, 87]


def test_equidistant_over_cycles_spreads_away_from_earlier_labels():
    """4 cycles of 2 picks in a 100-frame video: every new pick is far from all earlier labels."""
    labelled: list[tuple[str, int]] = []
    for _ in range(4):
        out = select_frames(score_table({"v": [0.0] * 100}), labels(*labelled) if labelled else None,
                            {"v": 100}, 2, "equidistant")
        before = [f for _, f in labelled]
        for f in out["frame"]:
            if before:
                assert min(abs(f - b) for b in before) >= 6, (f, before)
            before.append(int(f))
        labelled += picks(out)
    frames = sorted(f for _, f in labelled)
    assert max(np.diff([-1, *frames, 100])) <= 2 * min(np.diff([-1, *frames, 100])) + 1  # an even spread


def test_uncertainty_top_u_with_ties():
    out = select_frames(score_table(U3), LAB3, NF3, budget=4, strategy="uncertainty")
    assert picks(out) == [("v0", 1), ("v1", 0), ("v1", 1), ("v1", 3)]
    assert out["score"].tolist() == [0.9, 0.5, 0.5, 0.5]


def test_entropy_min_gap_respected_also_from_labelled_frames():
    ent = {"v": [0.9, 0.8, 0.95, 0.1, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]}
    scores = score_table({"v": [0.0] * 10}, entropy=ent)
    out = select_frames(scores, labels(("v", 9)), {"v": 10}, budget=5, strategy="entropy", min_gap=3)
    # 2 (0.95); 0 too close to 2; 1 too close; 4 too close (|4-2| = 2); 5 ok; 6, 7 too close to 5;
    # 8 too close to labelled 9; nothing else fits -> budget left unspent
    assert out["frame"].tolist() == [2, 5]
    assert out["score"].tolist() == [0.95, 0.6]
    frames = select_frames(scores, None, {"v": 10}, 10, "entropy", min_gap=2)["frame"].to_numpy()
    assert np.all(np.abs(frames[:, None] - frames[None, :])[~np.eye(len(frames), dtype=bool)] >= 2)
    with pytest.raises(ValueError, match="entropy"):
        select_frames(score_table({"v": [0.0]}), None, {"v": 1}, 1, "entropy")


def test_sample_level_whole_videos_never_over_budget():
    u = {"a": [0.2] * 4, "b": [0.9, 0.9, 0.9], "c": [0.5] * 2, "d": [0.5] * 2}
    nf = {v: len(x) for v, x in u.items()}
    # mean U over all scored frames (labelled ones included): b 0.9, c = d 0.5 (tie: c first), a 0.2
    out = select_frames(score_table(u), labels(("b", 0)), nf, budget=5, strategy="sample")
    # b (2 candidates), c (2) -> 1 left: d (2) and a (4) do not fit and are skipped
    assert picks(out) == [("b", 1), ("b", 2), ("c", 0), ("c", 1)]
    np.testing.assert_allclose(out["score"], [0.9, 0.9, 0.5, 0.5])
    out = select_frames(score_table(u), None, nf, budget=6, strategy="sample")
    assert [v for v, _ in picks(out)] == ["b"] * 3 + ["c"] * 2  # then 1 left: d (2) and a (4) skipped
    assert len(select_frames(score_table(u), None, nf, budget=2, strategy="sample")) == 2  # c fits


def test_custom_strategy_function():
    out = select_frames(score_table(U3), LAB3, NF3, budget=4, strategy=_naive_apu_global)
    assert picks(out) == picks(select_frames(score_table(U3), LAB3, NF3, 4, "apu-global"))
    assert (out["strategy"] == "_naive_apu_global").all()


def test_errors_say_what_was_wrong():
    scores = score_table(U3)
    with pytest.raises(ValueError, match="unknown strategy 'apu'.*apu-global"):
        select_frames(scores, None, NF3, 1, "apu")
    with pytest.raises(ValueError, match="budget"):
        select_frames(scores, None, NF3, -1)
    with pytest.raises(ValueError, match=r"missing columns \['uncertainty'\]"):
        select_frames(scores.drop(columns="uncertainty"), None, NF3, 1)
    with pytest.raises(ValueError, match="labelled table is missing"):
        select_frames(scores, pd.DataFrame({"video_id": ["v0"]}), NF3, 1)
    with pytest.raises(ValueError, match="'v1' frame 4 is outside"):
        select_frames(scores, None, {"v0": 5, "v1": 4, "v2": 5}, 1)
    with pytest.raises(ValueError, match="labelled: video 'v0' frame 7"):
        select_frames(scores, labels(("v0", 7)), NF3, 1)
    with pytest.raises(ValueError, match="'v2' is not in num_frames"):
        select_frames(scores, None, {"v0": 5, "v1": 5}, 1)
    with pytest.raises(ValueError, match="more than once"):
        select_frames(pd.concat([scores, scores.iloc[:1]]), None, NF3, 1)
    with pytest.raises(ValueError, match="NaN"):
        select_frames(scores.assign(uncertainty=np.nan), None, NF3, 1)


# ---- property: the heap implementation is exactly the naive "re-score everything after every pick"


@st.composite
def pools(draw):
    lengths = draw(st.lists(st.integers(1, 9), min_size=1, max_size=5))
    ids = [f"v{i}" for i in draw(st.permutations(range(len(lengths))))]  # index order != name order
    nf = dict(zip(ids, lengths))
    rows, lab = [], []
    for v, n in nf.items():
        for f in range(n):
            kind = draw(st.sampled_from(["candidate", "candidate", "labelled", "unscored"]))
            if kind == "labelled":
                lab.append((v, f))
            if kind != "unscored":  # labelled frames may be scored too; unscored ones are not candidates
                rows.append((v, f, draw(st.sampled_from([0.0, 0.25, 0.5, 1.0]))))  # few values: ties
    scores = pd.DataFrame(rows, columns=["video_id", "frame", "uncertainty"])
    return scores, labels(*lab), nf


@settings(max_examples=150, deadline=None)
@given(pools(), st.integers(0, 40), st.sampled_from([0.5, 1.3, 4.0]), st.sampled_from([0.0, 0.5, 1.0]))
def test_apu_global_equals_naive_rescoring(pool, budget, sigma, lam):
    scores, lab, nf = pool
    fast = select_frames(scores, lab, nf, budget, "apu-global", sigma=sigma, lam=lam)
    naive = select_frames(scores, lab, nf, budget, _naive_apu_global, sigma=sigma, lam=lam)
    pd.testing.assert_frame_equal(fast.drop(columns="strategy"), naive.drop(columns="strategy"))
    n_candidates = len(set(picks(scores)) - set(picks(lab)))
    assert len(fast) == min(budget, n_candidates)
    local = select_frames(scores, lab, nf, budget, "apu-local", sigma=sigma, lam=lam)
    assert len(local) == min(budget, n_candidates) and not local.duplicated(["video_id", "frame"]).any()
