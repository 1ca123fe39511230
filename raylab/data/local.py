"""The part of the Ray Data API raylab uses, run in this process (`ray.in_process: true`).

A sweep trial runs a whole active-learning experiment inside the trial's own process, sized to the
trial's resources (raylab/tune.py): its clips are decoded, its model trained and its frames scored
there, without Ray Data tasks or actors and without a nested Ray Train run. The step code stays the
same: it builds its datasets through `raylab.data.stream.dataset_from_blocks`, which returns a
`LocalDataset` in that mode, and a `LocalDataset` answers the calls the steps make on a Ray Dataset
(`map_batches` with a function or a callable class, `iter_batches` with a seeded local shuffle,
`iter_rows`, `to_pandas`, `write_parquet`) with the same batch semantics:

- `map_batches(batch_size=None)` hands the function one block at a time; an integer batch size cuts
  the stream into batches of exactly that many rows (the last one shorter), across block boundaries.
- a callable class is instantiated once per pass over the dataset (Ray Data: once per actor).
- Ray's resource options (`compute`, `num_cpus`, `num_gpus`, ...) are accepted and ignored.

Blocks are pyarrow Tables, pandas DataFrames or dicts of numpy arrays (one entry per column, rows on
the first axis); nothing here imports Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

Block = pa.Table | pd.DataFrame | dict


def num_rows(block: Block) -> int:
    if isinstance(block, dict):
        return len(next(iter(block.values()))) if block else 0
    return block.num_rows if isinstance(block, pa.Table) else len(block)


def to_numpy(block: Block) -> dict[str, np.ndarray]:
    """A block as a dict of column arrays (strings and lists as object arrays, like Ray Data's numpy)."""
    if isinstance(block, dict):
        return block
    if isinstance(block, pd.DataFrame):
        return {c: block[c].to_numpy() for c in block.columns}
    return {c: _arrow_column(block.column(c)) for c in block.column_names}


def _arrow_column(column: pa.ChunkedArray) -> np.ndarray:
    values = column.to_numpy(zero_copy_only=False)
    if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        out = np.empty(len(values), dtype=object)  # one array per row, never a stacked 2-D array
        out[:] = [np.asarray(v) for v in values]
        return out
    return values


def to_format(block: Block, batch_format: str) -> Block:
    if batch_format == "numpy":
        return to_numpy(block)
    if batch_format == "pyarrow":
        if isinstance(block, pa.Table):
            return block
        if isinstance(block, pd.DataFrame):
            return pa.Table.from_pandas(block, preserve_index=False)
        return pa.table({k: list(v) if v.ndim > 1 or v.dtype == object else v for k, v in block.items()})
    if batch_format == "pandas":
        if isinstance(block, pd.DataFrame):
            return block
        if isinstance(block, pa.Table):
            return block.to_pandas()
        return pd.DataFrame({k: list(v) if v.ndim > 1 else v for k, v in block.items()})
    raise ValueError(f"batch_format must be numpy, pyarrow or pandas, got {batch_format!r}")


def _slice(block: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    return {k: v[start:stop] for k, v in block.items()}


def _concat(blocks: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(blocks) == 1:
        return blocks[0]
    return {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}


def rebatch(blocks: Iterator[Block], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches of exactly `batch_size` rows (the last one shorter) from a stream of blocks."""
    pending: list[dict[str, np.ndarray]] = []
    count = 0
    for block in blocks:
        block = to_numpy(block)
        n, start = num_rows(block), 0
        while start < n:
            take = min(batch_size - count, n - start)
            pending.append(_slice(block, start, start + take))
            count, start = count + take, start + take
            if count == batch_size:
                yield _concat(pending)
                pending, count = [], 0
    if count:
        yield _concat(pending)


def shuffled(batches: Iterator[dict[str, np.ndarray]], batch_size: int, buffer_size: int,
             seed: int | None) -> Iterator[dict[str, np.ndarray]]:
    """A local shuffle: rows enter a buffer of at least `buffer_size` rows and leave it in random
    batches of `batch_size` (seeded), as Ray Data's `local_shuffle_buffer_size` does."""
    rng = np.random.default_rng(seed)
    buffer: dict[str, np.ndarray] | None = None

    def draw(buf: dict[str, np.ndarray], k: int):
        n = num_rows(buf)
        pick = rng.choice(n, size=k, replace=False)
        keep = np.setdiff1d(np.arange(n), pick, assume_unique=True)
        return {c: v[pick] for c, v in buf.items()}, {c: v[keep] for c, v in buf.items()}

    for batch in batches:
        buffer = batch if buffer is None else _concat([buffer, batch])
        while num_rows(buffer) >= buffer_size + batch_size:
            out, buffer = draw(buffer, batch_size)
            yield out
    while buffer is not None and num_rows(buffer):
        out, buffer = draw(buffer, min(batch_size, num_rows(buffer)))
        yield out


class LocalDataset:
    """A lazily evaluated chain of `map_batches` over blocks, run in the calling process."""

    def __init__(self, blocks: list[Block], ops: tuple = ()):
        self._blocks = list(blocks)
        self._ops = ops
        # what `stream.quiet_per_epoch` switches off on a Ray Dataset; nothing prints here anyway
        self.context = SimpleNamespace(enable_progress_bars=False, print_on_execution_start=False)

    def map_batches(self, fn: Callable | type, *, batch_size: int | None = None, batch_format: str = "numpy",
                    fn_kwargs: dict | None = None, fn_constructor_kwargs: dict | None = None,
                    **_ray_options: Any) -> LocalDataset:
        op = (fn, batch_size, batch_format, fn_kwargs or {}, fn_constructor_kwargs or {})
        return LocalDataset(self._blocks, self._ops + (op,))

    def _stream(self) -> Iterator[Block]:
        stream: Iterator[Block] = iter(self._blocks)
        for fn, batch_size, batch_format, kwargs, ctor_kwargs in self._ops:
            call = fn(**ctor_kwargs) if isinstance(fn, type) else fn
            stream = _apply(call, stream, batch_size, batch_format, kwargs)
        return stream

    def iter_batches(self, *, batch_size: int | None = 256, batch_format: str = "numpy",
                     local_shuffle_buffer_size: int | None = None, local_shuffle_seed: int | None = None,
                     **_ray_options: Any) -> Iterator[Block]:
        if batch_size is None:
            batches: Iterator[Block] = (to_numpy(b) for b in self._stream())
        else:
            batches = rebatch(self._stream(), batch_size)
            if local_shuffle_buffer_size:
                batches = shuffled(batches, batch_size, local_shuffle_buffer_size, local_shuffle_seed)
        for batch in batches:
            yield to_format(batch, batch_format)

    def iter_rows(self) -> Iterator[dict]:
        for block in self._stream():
            yield from to_format(block, "pandas").to_dict("records")

    def to_pandas(self) -> pd.DataFrame:
        frames = [to_format(b, "pandas") for b in self._stream()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def write_parquet(self, path: str | Path) -> None:
        """One parquet file per output block in folder `path` (as Ray Data writes a dataset)."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        for i, block in enumerate(self._stream()):
            if num_rows(block):
                pq.write_table(to_format(block, "pyarrow"), folder / f"{i:06d}.parquet")


def _apply(call: Callable, stream: Iterator[Block], batch_size: int | None, batch_format: str,
           kwargs: dict) -> Iterator[Block]:
    batches = stream if batch_size is None else rebatch(stream, batch_size)
    for batch in batches:
        yield call(to_format(batch, batch_format), **kwargs)
