"""Frame selection strategies of ASL and its baselines, as pure functions of a score table.

`select_frames(scores, labelled, num_frames, budget, strategy)` returns the frames to annotate next as
a table (video_id, frame, score, rank, strategy), rank being the pick order (0 = first picked).
No Ray, no files: the caller reads the tables. See docs/selection.md for every rule spelled out.

Candidates are the frames present in `scores` that are not in `labelled`. Video order is the order of
`num_frames` (the dataset index); every tie is broken by that order, then by the lower frame.

Strategies (`STRATEGIES`, add your own with `register_strategy`):
    apu-global   greedy max APU score S over all videos, D re-computed after every pick (exact).
    apu-local    ⌊b / N_v⌋ greedy APU picks per video, the rest by apu-global.
    random       uniform over candidates (numpy default_rng(seed)).
    equidistant  each pick at the middle of the largest gap between labelled frames (and video ends).
    uncertainty  Gal: top U.
    entropy      Aghdam: top pixel entropy, picks at least `min_gap` frames apart within a video.
    sample       whole videos by mean U, all their candidate frames, never over budget.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from raylab.acquisition.frame import apu_proximity, apu_scores
from raylab.proximity import nearest_annotated_distance


@dataclass(frozen=True)
class SelectOptions:
    """Strategy parameters (each strategy reads the ones it needs)."""

    sigma: float = 1.3  # Gaussian width of the APU proximity D (ASL Eq.2), frames
    lam: float = 0.5  # APU weight λ of U against D (ASL Eq.3)
    seed: int = 0  # random strategy
    min_gap: int = 5  # entropy strategy: min |i - j| between picked/annotated frames of one video


@dataclass
class FramePool:
    """Candidate frames sorted by (video order, frame); videos numbered 0..V-1 in dataset-index order.

    Per candidate c (arrays [M]): video[c], frame[c], uncertainty[c], entropy[c] (None if absent).
    Candidates of video v are c in [starts[v], starts[v + 1]). annotated[v]: sorted int64 frames
    labelled so far. mean_uncertainty[v]: mean U over ALL scored frames of v (labelled ones included).
    """

    video_ids: pd.Index  # [V] in dataset-index order
    num_frames: np.ndarray  # int64 [V]
    video: np.ndarray  # int64 [M]
    frame: np.ndarray  # int64 [M]
    uncertainty: np.ndarray  # float32 or float64 [M], as the score table holds it
    entropy: np.ndarray | None  # float32 or float64 [M]
    starts: np.ndarray  # int64 [V + 1]
    annotated: list[np.ndarray]  # V arrays
    annotated_flat: tuple[np.ndarray, np.ndarray]  # (video [L], frame [L]) sorted by (video, frame)
    mean_uncertainty: np.ndarray  # float64 [V], nan for a video without scored frames

    @property
    def size(self) -> int:
        return int(self.frame.size)


# A strategy maps (pool, budget, options) to (candidate indices [k] in pick order, score [k]).
Strategy = Callable[[FramePool, int, SelectOptions], tuple[np.ndarray, np.ndarray]]
STRATEGIES: dict[str, Strategy] = {}
UNSCORED = frozenset({"random", "equidistant"})  # strategies that never read the scores: no MC scoring needed


def register_strategy(name: str) -> Callable[[Strategy], Strategy]:
    """Decorator adding a strategy to `STRATEGIES` under `name`."""

    def wrap(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        return fn

    return wrap


# ---------------------------------------------------------------- APU: greedy with re-scoring


class _GreedyAPU:
    """Per-video APU state: nearest-annotation distances of the candidates and who is picked.

    D depends only on the integer distance to the nearest annotated frame, so it is looked up in a
    table built once by `apu_proximity` (last entry: no annotation in the video, D = 1). A pick at
    frame f changes only its own video: dist = min(dist, |frame - f|) there.
    """

    def __init__(self, pool: FramePool, opts: SelectOptions):
        self.pool, self.lam = pool, opts.lam
        self.none = int(pool.num_frames.max(initial=1))  # sentinel distance: no annotation in the video
        self.table = np.append(apu_proximity(np.arange(self.none), [0], opts.sigma), 1.0)  # [none + 1]
        self.dist = _initial_distance(pool, self.none)  # int64 [M]
        self.alive = np.ones(pool.size, dtype=bool)  # not picked yet

    def scores(self, v: int) -> np.ndarray:
        """Current S of video v's candidates, -inf where already picked; float64 [M_v]."""
        s, e = self.pool.starts[v], self.pool.starts[v + 1]
        S = apu_scores(self.pool.uncertainty[s:e], self.table[self.dist[s:e]], self.lam)
        return np.where(self.alive[s:e], S, -np.inf)

    def best(self, v: int) -> tuple[float, int] | None:
        """(score, candidate index) of video v's best candidate (ties: lower frame), None if none."""
        S = self.scores(v)
        if S.size == 0:
            return None
        j = int(np.argmax(S))  # first maximum = lowest frame
        return (float(S[j]), int(self.pool.starts[v] + j)) if S[j] > -np.inf else None

    def pick(self, v: int, c: int) -> None:
        s, e = self.pool.starts[v], self.pool.starts[v + 1]
        self.alive[c] = False
        np.minimum(self.dist[s:e], np.abs(self.pool.frame[s:e] - self.pool.frame[c]), out=self.dist[s:e])

    def heap(self) -> list[tuple[float, int, int, int]]:
        """A heap of (-S, video, frame, candidate) holding every video's best unpicked candidate."""
        p = self.pool
        if not self.alive.any():
            return []
        S = np.where(self.alive, apu_scores(p.uncertainty, self.table[self.dist], self.lam), -np.inf)  # [M]
        nonempty = np.flatnonzero(np.diff(p.starts) > 0)
        seg_max = np.maximum.reduceat(S, p.starts[nonempty])  # [V'] reduceat over non-empty segments
        is_max = np.flatnonzero(S == np.repeat(seg_max, np.diff(p.starts)[nonempty]))
        first = is_max[np.searchsorted(is_max, p.starts[nonempty])]  # first maximum of each video
        live = np.isfinite(seg_max)  # videos with a candidate left
        first, videos = first[live], nonempty[live]
        heap = list(zip((-S[first]).tolist(), videos.tolist(), p.frame[first].tolist(), first.tolist()))
        heapq.heapify(heap)
        return heap


def _initial_distance(pool: FramePool, none: int) -> np.ndarray:
    """int64 [M] distance of each candidate to its video's nearest annotated frame, `none` if none.

    One `nearest_annotated_distance` call over the whole pool: frames are keyed video * 2·none + frame,
    so any cross-video distance exceeds none - 1 >= every within-video distance.
    """
    lab_video, lab_frame = pool.annotated_flat
    stride = 2 * none
    d = nearest_annotated_distance(pool.video * stride + pool.frame, lab_video * stride + lab_frame)
    return np.where(d <= none - 1, d, none).astype(np.int64)


def _greedy_global(state: _GreedyAPU, budget: int, picked: list, scores: list) -> None:
    """Pick until `picked` holds `budget` frames (or none is left) by max S over all videos."""
    _drain(state, state.heap(), budget, picked, scores)


def _drain(state: _GreedyAPU, heap: list, budget: int, picked: list, scores: list) -> None:
    # The heap holds each video's current best as (-S, video order, frame, candidate): popping gives the
    # global max with ties to the earlier video, then the lower frame. Only the popped video changes on
    # a pick, so every other entry stays valid and no lazy invalidation is needed.
    while len(picked) < budget and heap:
        neg_s, v, _, c = heapq.heappop(heap)
        picked.append(c)
        scores.append(-neg_s)
        state.pick(v, c)
        if (b := state.best(v)) is not None:
            heapq.heappush(heap, (-b[0], v, int(state.pool.frame[b[1]]), b[1]))


@register_strategy("apu-global")
def apu_global(pool: FramePool, budget: int, opts: SelectOptions) -> tuple[np.ndarray, np.ndarray]:
    """ASL global selection: repeatedly take the max-S candidate of the pool, then re-score its video.

    Exactly `_naive_apu_global` (re-score everything after every pick), in O(M + b (M_v + log V)).
    """
    picked: list[int] = []
    scores: list[float] = []
    _greedy_global(_GreedyAPU(pool, opts), budget, picked, scores)
    return np.asarray(picked, dtype=np.int64), np.asarray(scores, dtype=np.float64)


def _naive_apu_global(pool: FramePool, budget: int, opts: SelectOptions) -> tuple[np.ndarray, np.ndarray]:
    """Reference for tests and the benchmark: re-score EVERY candidate with `apu_proximity` per pick."""
    annotated = [a.tolist() for a in pool.annotated]
    alive = np.ones(pool.size, dtype=bool)
    picked, scores = [], []
    while len(picked) < budget and alive.any():
        S = np.full(pool.size, -np.inf)
        for v in range(len(pool.video_ids)):
            s, e = pool.starts[v], pool.starts[v + 1]
            D = apu_proximity(pool.frame[s:e], np.asarray(annotated[v], dtype=np.int64), opts.sigma)
            S[s:e] = apu_scores(pool.uncertainty[s:e], D, opts.lam)
        S[~alive] = -np.inf
        c = int(np.argmax(S))  # candidates are sorted by (video, frame): first max wins ties
        picked.append(c)
        scores.append(float(S[c]))
        alive[c] = False
        annotated[int(pool.video[c])].append(int(pool.frame[c]))
    return np.asarray(picked, dtype=np.int64), np.asarray(scores, dtype=np.float64)


@register_strategy("apu-local")
def apu_local(pool: FramePool, budget: int, opts: SelectOptions) -> tuple[np.ndarray, np.ndarray]:
    """ASL local selection: ⌊b / N_v⌋ greedy APU picks in each video with candidates (fewer if it has
    fewer candidates), in video order; then whatever budget is left (b mod N_v plus any shortfall) by
    apu-global continued from that state (re-scoring after every pick, same tie-breaks)."""
    state = _GreedyAPU(pool, opts)
    counts = np.diff(pool.starts)
    per_video = budget // max(int((counts > 0).sum()), 1)
    picked: list[int] = []
    scores: list[float] = []
    for v in np.flatnonzero(counts > 0).tolist():
        for _ in range(per_video):
            if (b := state.best(v)) is None:
                break
            picked.append(b[1])
            scores.append(b[0])
            state.pick(v, b[1])
    _greedy_global(state, budget, picked, scores)
    return np.asarray(picked, dtype=np.int64), np.asarray(scores, dtype=np.float64)


# ---------------------------------------------------------------- baselines


@register_strategy("random")
def random_frames(pool: FramePool, budget: int, opts: SelectOptions) -> tuple[np.ndarray, np.ndarray]:
    """Uniform without replacement over candidates, numpy default_rng(seed); score = NaN."""
    k = min(budget, pool.size)
    idx = np.random.default_rng(opts.seed).choice(pool.size, size=k, replace=False)
    return idx.astype(np.int64), np.full(k, np.nan)


@register_strategy("equidistant")
def equidistant(pool: FramePool, budget: int, opts: SelectOptions) -> tuple[np.ndarray, np.ndarray]:
    """Each pick at the middle of the largest gap left by the labelled frames; score = NaN.

    A video's gaps lie between consecutive boundaries, its labelled frames and its ends (-1 and n); a
    gap's size is hi - lo. Repeatedly, the largest gap over all videos (ties: earlier video, lower
    frame) gets the candidate nearest its middle (lo + hi) / 2 (ties: the lower frame) and is split in
    two there. The labelled frames of earlier cycles bound the gaps, so over cycles the labels spread
    evenly instead of piling up next to each other. Ranked in pick order.
    """
    heap: list[tuple[int, int, int, int]] = []  # (-size, video, lo, hi)
    for v in range(len(pool.video_ids)):
        s, e = pool.starts[v], pool.starts[v + 1]
        if s < e:
            bounds = np.concatenate([[-1], pool.annotated[v], [int(pool.num_frames[v])]])
            heap += [(-int(hi - lo), v, int(lo), int(hi)) for lo, hi in zip(bounds[:-1], bounds[1:])
                     if hi - lo > 1]
    heapq.heapify(heap)
    picked: list[int] = []
    while heap and len(picked) < budget:
        _, v, lo, hi = heapq.heappop(heap)
        frames = pool.frame[pool.starts[v] : pool.starts[v + 1]]
        first, last = np.searchsorted(frames, lo, side="right"), np.searchsorted(frames, hi)
        if first == last:  # no candidate inside this gap
            continue
        inside = frames[first:last]
        j = int(np.argmin(np.abs(2 * inside - (lo + hi))))  # first minimum = lower frame
        f = int(inside[j])
        picked.append(int(pool.starts[v] + first + j))
        for a, b in ((lo, f), (f, hi)):
            if b - a > 1:
                heapq.heappush(heap, (-(b - a), v, a, b))
    idx = np.asarray(picked, dtype=np.int64)
    return idx, np.full(idx.size, np.nan)


def _top(values: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values; ties: earlier video, then lower frame (pool order)."""
    return np.lexsort((np.arange(values.size), -values))[:k]


@register_strategy("uncertainty")
def uncertainty_top(pool: FramePool, budget: int, opts: SelectOptions) -> tuple[np.ndarray, np.ndarray]:
    """Gal et al.: the b candidates of highest U (no distance term); score = U."""
    idx = _top(pool.uncertainty, budget)
    return idx, pool.uncertainty[idx]


@register_strategy("entropy")
def entropy_gap(pool: FramePool, budget: int, opts: SelectOptions) -> tuple[np.ndarray, np.ndarray]:
    """Aghdam et al.: highest pixel entropy first, skipping any candidate closer than `min_gap` frames
    (|i - j| < min_gap) to a frame already picked OR already annotated in the same video; score = entropy.

    The budget may stay partly unspent when the gap rules out every remaining candidate.
    """
    if pool.entropy is None:
        raise ValueError("strategy 'entropy' needs an 'entropy' column in the scores table")
    taken = [a.tolist() for a in pool.annotated]  # per video, frames that block their neighbourhood
    picked: list[int] = []
    for c in _top(pool.entropy, pool.size).tolist():
        if len(picked) >= budget:
            break
        v, f = int(pool.video[c]), int(pool.frame[c])
        if all(abs(f - t) >= opts.min_gap for t in taken[v]):
            picked.append(c)
            taken[v].append(f)
    idx = np.asarray(picked, dtype=np.int64)
    return idx, pool.entropy[idx]


@register_strategy("sample")
def sample_level(pool: FramePool, budget: int, opts: SelectOptions) -> tuple[np.ndarray, np.ndarray]:
    """Sample-level selection: videos by descending mean U over their scored frames (ties: video order);
    all candidate frames of each chosen video. Never over budget: a video whose candidates do not fit
    in what is left is skipped and the next one is tried. score = the video's mean U.
    """
    counts = np.diff(pool.starts)
    videos = np.flatnonzero(counts > 0)
    order = videos[np.lexsort((videos, -pool.mean_uncertainty[videos]))]
    chosen, left = [], budget
    for v in order.tolist():
        if counts[v] <= left:
            chosen.append(np.arange(pool.starts[v], pool.starts[v + 1]))
            left -= int(counts[v])
    idx = np.concatenate(chosen) if chosen else np.zeros(0, dtype=np.int64)
    return idx, pool.mean_uncertainty[pool.video[idx]]


# ---------------------------------------------------------------- tables in, table out


def _as_frame(table, name: str, required: tuple[str, ...]) -> pd.DataFrame:
    if table is None:
        table = pd.DataFrame({c: [] for c in required})
    df = table.to_pandas() if hasattr(table, "to_pandas") and not isinstance(table, pd.DataFrame) else table
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame or a pyarrow Table, got {type(table).__name__}")
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{name} table is missing columns {missing} (it has {list(df.columns)})")
    return df


def _columns(table, name: str, required: tuple[str, ...], ids: pd.Index) -> dict:
    """A table's columns as arrays: video (position in `ids`, -1 if unknown) [R], frame [R], the other
    required columns and entropy when present, and `id_of(r)`, row r's video_id (for errors).

    A pyarrow Table (e.g. `raylab.score.read_score_columns`, video_id plain or dictionary-encoded) is
    read column by column, without a pandas frame or a Python string per row."""
    if not isinstance(table, pa.Table):
        df = _as_frame(table, name, required)
        cols = {c: df[c].to_numpy() for c in df.columns if c in required or c == "entropy"}
        cols["video"] = ids.get_indexer(df["video_id"])
        cols["id_of"] = lambda r: df["video_id"].to_numpy()[r]
        return cols
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ValueError(f"{name} table is missing columns {missing} (it has {table.column_names})")
    cols = {c: table.column(c).to_numpy() for c in table.column_names
            if c != "video_id" and (c in required or c == "entropy")}
    cols["video"] = _positions(table.column("video_id"), pa.array(list(ids), pa.string()))
    cols["id_of"] = lambda r: table.column("video_id")[r].as_py()
    return cols


def _floats(values) -> np.ndarray:
    """float32 or float64 scores as they are; anything else as float64."""
    values = np.asarray(values)
    return values if values.dtype in (np.float32, np.float64) else values.astype(np.float64)


def _positions(video_ids: pa.ChunkedArray, ids: pa.Array) -> np.ndarray:
    """int64 [R] position of each video id in `ids`, -1 where absent; a dictionary chunk is looked up
    once per dictionary entry."""
    out = []
    for chunk in video_ids.chunks:
        if pa.types.is_dictionary(chunk.type):
            found = pc.index_in(chunk.dictionary.cast(pa.string()), value_set=ids).fill_null(-1)
            codes = chunk.indices.to_numpy(zero_copy_only=False)
            out.append(found.to_numpy().astype(np.int64)[codes])
        else:
            out.append(pc.index_in(chunk.cast(pa.string()), value_set=ids).fill_null(-1).to_numpy()
                       .astype(np.int64))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _locate(cols: dict, name: str, ids: pd.Index, nf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(video order [R], frame [R]) of a table's rows (`_columns`), checked against num_frames."""
    video, frame = cols["video"], cols["frame"]
    if (video < 0).any():
        bad = cols["id_of"](int(np.flatnonzero(video < 0)[0]))
        raise ValueError(f"{name}: video {bad!r} is not in num_frames (the dataset index)")
    if frame.size and not np.issubdtype(frame.dtype, np.integer):
        if not np.all(np.mod(frame, 1) == 0):
            raise ValueError(f"{name}: frame must hold integer frame indices, got dtype {frame.dtype}")
    frame = frame.astype(np.int64)
    out = (frame < 0) | (frame >= nf[video])
    if out.any():
        r = int(np.flatnonzero(out)[0])
        raise ValueError(
            f"{name}: video {ids[video[r]]!r} frame {frame[r]} is outside [0, {nf[video[r]]}) "
            "(num_frames); check that the scores and labels belong to this dataset index"
        )
    return video.astype(np.int64), frame


def build_pool(scores, labelled, num_frames: Mapping, need_entropy: bool = False) -> FramePool:
    """Validate the inputs of `select_frames` and gather the candidates (see `FramePool`)."""
    ids = pd.Index(list(num_frames))
    nf = np.asarray([int(num_frames[v]) for v in ids], dtype=np.int64)
    cols = ("video_id", "frame", "uncertainty") + (("entropy",) if need_entropy else ())
    sc = _columns(scores, "scores", cols, ids)
    video, frame = _locate(sc, "scores", ids, nf)
    u = _floats(sc.pop("uncertainty"))  # float32 scores stay float32: a pool of 1M frames costs 4 MB
    if not np.isfinite(u).all():
        raise ValueError("scores: uncertainty has NaN or infinite values")
    ent = _floats(sc.pop("entropy")) if "entropy" in sc else None
    del sc  # arrays of the pool's size are kept once, here on
    stride = int(nf.max(initial=1))
    key = video * stride + frame
    step = np.diff(key)
    if (step <= 0).any():  # shards come in clip order, which is (video, frame) order for stride 1
        sort = np.argsort(key, kind="stable")
        key, video, frame, u = key[sort], video[sort], frame[sort], u[sort]
        ent = None if ent is None else ent[sort]
        step = np.diff(key)
    if (step == 0).any():
        r = int(np.flatnonzero(step == 0)[0])
        raise ValueError(f"scores: video {ids[video[r]]!r} frame {frame[r]} appears more than once")
    del step
    lv, lf = _locate(_columns(labelled, "labelled", ("video_id", "frame"), ids), "labelled", ids, nf)
    lab_key = np.unique(lv * stride + lf)
    lv, lf = lab_key // stride, lab_key % stride
    pos = np.clip(np.searchsorted(lab_key, key), 0, max(lab_key.size - 1, 0))
    cand = ~(lab_key[pos] == key) if lab_key.size else np.ones(key.size, dtype=bool)
    del key, pos
    if ent is not None and need_entropy and not np.isfinite(ent[cand]).all():
        raise ValueError("scores: entropy has NaN or infinite values")
    v_all = np.arange(ids.size)
    u_sum = np.bincount(video, weights=u, minlength=ids.size)
    n_scored = np.bincount(video, minlength=ids.size)
    lab_starts = np.searchsorted(lv, np.arange(ids.size + 1))
    if not cand.all():  # labelled frames among the scored ones: keep the candidates only
        video, frame, u = video[cand], frame[cand], u[cand]
        ent = None if ent is None else ent[cand]
    return FramePool(
        video_ids=ids,
        num_frames=nf,
        video=video,
        frame=frame,
        uncertainty=u,
        entropy=ent,
        starts=np.searchsorted(video, np.arange(ids.size + 1)).astype(np.int64),
        annotated=[lf[lab_starts[v] : lab_starts[v + 1]] for v in v_all],
        annotated_flat=(lv, lf),
        mean_uncertainty=np.where(n_scored > 0, u_sum / np.maximum(n_scored, 1), np.nan),
    )


def select_frames(
    scores,
    labelled,
    num_frames: Mapping,
    budget: int,
    strategy: str | Strategy = "apu-global",
    sigma: float = 1.3,
    lam: float = 0.5,
    seed: int = 0,
    min_gap: int = 5,
) -> pd.DataFrame:
    """Choose the next frames to annotate.

    Args:
        scores: pandas DataFrame or pyarrow Table with video_id, frame, uncertainty (U in [0, 1]) and,
            for the entropy strategy, entropy; one row per scored frame. Frames missing here are never
            candidates. A Table is read by column (video_id may be dictionary-encoded), never as a
            pandas frame: `raylab.score.read_score_columns` gives one for a pool of any size.
        labelled: table with video_id, frame of the frames annotated so far (None: nothing labelled).
        num_frames: ordered mapping video_id -> frame count, in dataset-index order; that order breaks
            ties between videos.
        budget: number of frames to pick (>= 0); fewer are returned when the pool runs out.
        strategy: a name in `STRATEGIES` or a function (pool, budget, SelectOptions) -> (idx, score).
        sigma, lam: APU σ (Eq.2) and λ (Eq.3). seed: random strategy. min_gap: entropy strategy.

    Returns:
        DataFrame [k rows] with video_id, frame (int64), score (float64: the strategy's ranking value
        at pick time, NaN for random / equidistant), rank (int64, 0 = first pick), strategy (str).
    """
    name = strategy if isinstance(strategy, str) else getattr(strategy, "__name__", "custom")
    if isinstance(strategy, str):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; known: {sorted(STRATEGIES)}")
        strategy = STRATEGIES[strategy]
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 0:
        raise ValueError(f"budget must be an integer >= 0, got {budget!r}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if min_gap < 0:
        raise ValueError(f"min_gap must be >= 0, got {min_gap}")
    pool = build_pool(scores, labelled, num_frames, need_entropy=strategy is entropy_gap)
    idx, score = strategy(pool, int(budget), SelectOptions(sigma, lam, seed, int(min_gap)))
    return pd.DataFrame({
        "video_id": pool.video_ids.take(pool.video[idx]),
        "frame": pool.frame[idx].astype(np.int64),
        "score": np.asarray(score, dtype=np.float64),
        "rank": np.arange(idx.size, dtype=np.int64),
        "strategy": name,
    })
