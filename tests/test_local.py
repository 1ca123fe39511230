"""`LocalDataset` (ray.in_process): Ray Data's batch semantics in this process, and a training cycle run
in process; no Ray."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from raylab.data.local import LocalDataset, rebatch, shuffled
from tests.conftest import open_tiny_run


def blocks_of(sizes: list[int]) -> list[pa.Table]:
    start, out = 0, []
    for n in sizes:
        rows = np.arange(start, start + n)
        out.append(pa.table({"i": rows, "name": [f"r{k}" for k in rows]}))
        start += n
    return out


def test_rebatch_cuts_exact_batches_across_block_boundaries():
    sizes = [len(b["i"]) for b in rebatch(iter(blocks_of([3, 5, 2, 7])), 4)]
    assert sizes == [4, 4, 4, 4, 1]
    rows = np.concatenate([b["i"] for b in rebatch(iter(blocks_of([3, 5, 2, 7])), 4)])
    assert rows.tolist() == list(range(17))


def test_map_batches_hands_blocks_or_fixed_batches_and_builds_a_class_once_per_pass():
    built = []

    class Double:
        def __init__(self, factor):
            built.append(factor)
            self.factor = factor

        def __call__(self, batch):
            assert isinstance(batch, dict) and len(batch["i"]) <= 3
            return {"i": batch["i"] * self.factor, "name": batch["name"]}

    def tag(block: pa.Table, suffix: str) -> pa.Table:
        assert isinstance(block, pa.Table)  # batch_format pyarrow, one block per call
        return block.append_column("tagged", pa.array([n + suffix for n in block["name"].to_pylist()]))

    ds = LocalDataset(blocks_of([4, 4])).map_batches(tag, batch_format="pyarrow", fn_kwargs={"suffix": "!"}) \
        .map_batches(Double, batch_size=3, fn_constructor_kwargs={"factor": 2}, compute="ignored", num_cpus=1)
    df = ds.to_pandas()
    assert df["i"].tolist() == [2 * k for k in range(8)] and built == [2]
    assert set(df.columns) == {"i", "name"}
    assert [r["i"] for r in ds.iter_rows()] == df["i"].tolist() and built == [2, 2]


def test_local_shuffle_is_a_seeded_permutation():
    ds = LocalDataset(blocks_of([10, 10, 10]))

    def epoch(seed):
        return np.concatenate([b["i"] for b in ds.iter_batches(batch_size=4, local_shuffle_buffer_size=8,
                                                               local_shuffle_seed=seed)]).tolist()

    a, b, c = epoch(1), epoch(1), epoch(2)
    assert sorted(a) == list(range(30)) and a == b and a != c and a != list(range(30))
    assert all(len(x["i"]) == 4 for x in list(shuffled(rebatch(iter(blocks_of([9])), 4), 4, 4, 0))[:2])


def test_write_parquet_writes_every_row(tmp_path):
    LocalDataset([pd.DataFrame({"a": [1, 2]}), pd.DataFrame({"a": [3]})]).write_parquet(tmp_path / "out")
    assert sorted(pd.read_parquet(tmp_path / "out")["a"]) == [1, 2, 3]


def test_batch_format_is_checked():
    with pytest.raises(ValueError, match="batch_format"):
        list(LocalDataset(blocks_of([2])).iter_batches(batch_size=1, batch_format="torch"))


def test_a_training_cycle_runs_in_process_without_ray_train(tmp_path_factory, one_torch_thread):
    """`ray.in_process`: the detector's worker function runs here and leaves the same files."""
    from raylab.asl import training_clips, training_dataset
    from raylab.train import MODEL_FILE, load_detector, train_cycle

    cfg, run, data, store = open_tiny_run(tmp_path_factory, "pipelines/smoke.yaml", "ray.in_process=true",
                                          "train.epochs=2")
    dataset = training_dataset(cfg, data, store, 0)
    assert isinstance(dataset, LocalDataset)
    result = train_cycle(cfg, run, 0, dataset, len(data.classes))
    assert result.checkpoint == run / "checkpoints" / "cycle=0" / MODEL_FILE
    lines = (run / "checkpoints" / "cycle=0" / "history.jsonl").read_text().splitlines()
    history = [json.loads(x) for x in lines]
    assert [h["epoch"] for h in history] == [0, 1] == [h["epoch"] for h in result.history]
    assert history[0]["clips"] == len(training_clips(cfg, data.train, store.labelled_frames(), 0))
    assert not (run / "ray_train").exists()  # no Ray Train run
    load_detector(result.checkpoint)  # loads as a Ray Train checkpoint would
