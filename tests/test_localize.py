"""AL-STAL's Ray work (raylab/localize.py) on a tiny synthetic feature set made here with numpy.

Fast tests (no Ray) cover windows, segment conversion and clipping, targets, the plain-torch epoch,
scores and the seconds of predictions; two Ray tests train a cycle on Ray Train and score on actor pools.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from raylab import localize as L
from raylab.config import ALSTALConfig, ClipConfig, Config, LocalizerConfig, RayConfig, TrainConfig
from raylab.models.localizer import Localizer, localizer_targets

D, C = 16, 3
FPS, STRIDE = 25.0, 4  # seconds = snippets * 4 / 25
CLASSES = ["jump", "run", "wave"]
TRAIN = [f"v{v:02d}" for v in range(10)]
HELD_OUT = [f"v{v:02d}" for v in range(10, 20)]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_features(folder: Path, videos: int = 20, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`videos` feature files of T in 60..100 snippets x D: Gaussian noise, plus a class-specific pattern
    on the snippets of each action segment (6..20 snippets, separated by 4..14 of background).

    Returns: the feats table and the ground-truth segments (seconds) table.
    """
    rng = np.random.default_rng(seed)
    patterns = rng.normal(size=(C, D))
    feats, gt = [], []
    for v in range(videos):
        vid, length = f"v{v:02d}", int(rng.integers(60, 101))
        x = rng.normal(size=(length, D)).astype(np.float32)  # [T, D]
        t = int(rng.integers(0, 6))
        while True:
            size = int(rng.integers(6, 21))
            if t + size > length:
                break
            c = int(rng.integers(C))
            x[t : t + size] += patterns[c]
            gt.append((vid, t * STRIDE / FPS, (t + size) * STRIDE / FPS, c, "gt"))
            t += size + int(rng.integers(4, 15))
        np.save(folder / f"{vid}.npy", x)
        feats.append((vid, str((folder / f"{vid}.npy").resolve()), length, D, FPS, STRIDE))
    return (pd.DataFrame(feats, columns=["video_id", "path", "snippets", "dim", "fps", "snippet_stride"]),
            pd.DataFrame(gt, columns=["video_id", "t_start", "t_end", "label", "source"]))


def make_cfg(**alstal) -> Config:
    return Config(method="alstal", localizer=LocalizerConfig(feature_dim=D, width=32, levels=3, dropout=0.1),
                  alstal=ALSTALConfig(window=32, **alstal), clips=ClipConfig(batch_size=8),
                  train=TrainConfig(epochs=20, lr=3e-3, num_workers=1, cpus_per_worker=1.0),
                  ray=RayConfig(decode_num_cpus=1.0))


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    folder = tmp_path_factory.mktemp("features")
    feats, gt = make_features(folder)
    return folder, feats, gt


def local_batches(cfg, feats, gt, videos, seed=0, batch=8):
    """Decoded window batches without Ray: what the Ray Data stream yields."""
    table = L.window_table(cfg, feats, gt[gt["video_id"].isin(videos)], videos, seed)
    arrow = L._arrow_windows(table)
    most = max([len(lab) for lab in table["labels"]] + [1])
    return [L.decode_windows(arrow.slice(i, batch), most) for i in range(0, arrow.num_rows, batch)]


def untrained(cfg, path: Path) -> Path:
    torch.manual_seed(0)
    L.save_localizer(path, Localizer(cfg.localizer, C))
    return path


@pytest.fixture(scope="module")
def trained(synth, tmp_path_factory):
    """A localizer trained in-process (12 epochs of `train_epoch`, ~2 s): checkpoint path and losses."""
    _, feats, gt = synth
    cfg = make_cfg()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: before the `one_thread` fixture
    torch.manual_seed(0)
    model = Localizer(cfg.localizer, C)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    losses = []
    for epoch in range(12):
        batches = local_batches(cfg, feats, gt, TRAIN, seed=epoch)
        losses.append(L.train_epoch(model, batches, optimizer, "cpu", False)["total"])
    torch.set_num_threads(threads)
    path = tmp_path_factory.mktemp("trained") / "model.pt"
    L.save_localizer(path, model, epoch=11)
    return path, losses


# ---------------------------------------------------------------- windows and segments


@pytest.mark.parametrize("snippets, window, starts", [
    (100, 32, [0, 16, 32, 48, 64, 68]),  # the last window moved back to end on snippet 99
    (96, 32, [0, 16, 32, 48, 64]),  # exact fit
    (33, 32, [0, 1]),
    (32, 32, [0]),
    (20, 32, [0]),  # shorter than a window: one, padded
    (5, 1, [0, 1, 2, 3, 4]),  # hop of at least 1
])
def test_window_starts(snippets, window, starts):
    assert L.window_starts(snippets, window) == starts


def test_clip_segments_keeps_what_is_mostly_inside():
    segments = np.array([[10, 20], [28, 40], [30, 40], [0, 100], [45, 50]], np.float64)
    rel, lab = L.clip_segments(segments, np.arange(5), 16, 48)  # window [16, 48), 32 snippets
    # [10, 20]: 4 of 10 inside < 5: dropped; [28, 40] whole; [30, 40] whole; [0, 100]: fills the window
    # (32 >= 0.5 x 32); [45, 50]: 3 of 5 inside >= 2.5: kept, clipped to the window's end
    assert lab.tolist() == [1, 2, 3, 4]
    assert rel.tolist() == [[12, 24], [14, 24], [0, 32], [29, 32]]
    assert rel.dtype == np.float32
    rel, lab = L.clip_segments(np.zeros((0, 2)), np.zeros(0), 0, 32)
    assert rel.shape == (0, 2) and lab.shape == (0,)


def test_window_table_converts_pads_and_shuffles(tmp_path):
    np.save(tmp_path / "long.npy", np.zeros((70, D), np.float32))
    np.save(tmp_path / "short.npy", np.zeros((20, D), np.float32))
    np.save(tmp_path / "empty.npy", np.zeros((40, D), np.float32))
    feats = pd.DataFrame({"video_id": ["long", "short", "empty"],
                          "path": [str(tmp_path / f"{v}.npy") for v in ("long", "short", "empty")],
                          "snippets": [70, 20, 40], "dim": D, "fps": [25.0, 10.0, 25.0],
                          "snippet_stride": [4, 2, 4]})
    # long: snippets [25, 37.5) and [62.5, 75) -> clipped to the video, [62.5, 70); short: [2, 10)
    segs = pd.DataFrame({"video_id": ["long", "long", "short"], "t_start": [4.0, 10.0, 0.4],
                         "t_end": [6.0, 12.0, 2.0], "label": [1, 2, 0], "source": ["gt", "pseudo", "gt"]})
    cfg = make_cfg()
    table = L.window_table(cfg, feats, segs, ["long", "short", "empty"], seed=0)
    by = {(r.video_id, r.start): r for r in table.itertuples()}
    assert sorted(by) == [("empty", 0), ("empty", 8), ("long", 0), ("long", 16), ("long", 32),
                          ("long", 38), ("short", 0)]
    long16, long38 = by[("long", 16)], by[("long", 38)]
    assert long16.segments.tolist() == [[9.0, 21.5]] and long16.labels.tolist() == [1]
    assert long38.segments.tolist() == [[24.5, 32.0]]
    assert long38.labels.tolist() == [2]  # [25, 37.5) has 0 inside [38, 70): gone
    short = by[("short", 0)]
    assert (short.start, short.stop) == (0, 20)
    assert short.frames.tolist() == list(range(20)) + [19] * 12  # padded with the last snippet...
    assert short.valid.tolist() == [True] * 20 + [False] * 12  # ...marked as padding
    assert short.segments.tolist() == [[2.0, 10.0]]
    assert all(len(r.labels) == 0 for r in table.itertuples() if r.video_id == "empty")
    # the seed shuffles the windows, reproducibly
    again = L.window_table(cfg, feats, segs, ["long", "short", "empty"], seed=0)
    other = L.window_table(cfg, feats, segs, ["long", "short", "empty"], seed=1)
    assert list(zip(again.video_id, again.start)) == list(zip(table.video_id, table.start))
    assert list(zip(other.video_id, other.start)) != list(zip(table.video_id, table.start))
    assert sorted(zip(other.video_id, other.start)) == sorted(zip(table.video_id, table.start))


def test_window_table_errors_name_the_videos(synth):
    _, feats, gt = synth
    cfg = make_cfg()
    with pytest.raises(ValueError, match="without features: \\['nope'\\]"):
        L.window_table(cfg, feats, gt.iloc[:0], ["v00", "nope"], 0)
    with pytest.raises(ValueError, match="not training videos: \\['v01'\\]"):
        L.window_table(cfg, feats, gt[gt["video_id"].isin(["v00", "v01"])], ["v00"], 0)
    bad = gt[gt["video_id"] == "v00"].assign(label=-1)
    with pytest.raises(ValueError, match="'v00': segment label -1"):
        L.window_table(cfg, feats, bad, ["v00"], 0)


def test_decode_windows_reads_the_window_rows_and_pads(synth):
    _, feats, gt = synth
    cfg = replace(make_cfg(), alstal=replace(make_cfg().alstal, window=128))  # every video: one padded window
    (batch,) = local_batches(cfg, feats, gt, ["v00", "v01"])
    assert batch["features"].shape == (2, 128, D) and batch["features"].dtype == np.float32
    for i, vid in enumerate(batch["video_id"]):
        x = np.load(feats.set_index("video_id").loc[vid, "path"])
        n = len(x)
        assert batch["valid"][i].sum() == n
        np.testing.assert_array_equal(batch["features"][i, :n], x)
        assert not batch["features"][i, n:].any()  # zeros on padding
        rows = gt[gt["video_id"] == vid]
        m = len(rows)
        np.testing.assert_allclose(batch["segments"][i, :m],
                                   rows[["t_start", "t_end"]].to_numpy() * FPS / STRIDE, atol=1e-5)
        assert batch["labels"][i, :m].tolist() == rows["label"].tolist()
        assert (batch["labels"][i, m:] == -1).all()


def test_window_targets_ignore_padding():
    batch = {"segments": np.array([[[2.0, 10.0], [0.0, 0.0]]], np.float32),
             "labels": np.array([[1, -1]]), "valid": np.arange(32)[None] < 20}
    targets = L.window_targets(batch, levels=3, size_base=8.0)
    plain = localizer_targets([[[2.0, 10.0]]], [[1]], 32, 3, 8.0)
    centers = torch.cat([(torch.arange(32 // s) + 0.5) * s for s in (1, 2, 4)])
    padding = centers >= 20
    assert (targets["cls"][0, padding] == -1).all()
    assert torch.equal(targets["cls"][0, ~padding], plain["cls"][0, ~padding])
    assert (targets["cls"] == 2).sum() > 0  # class 1 -> index 2 (0 is background)


# ---------------------------------------------------------------- training and scoring without Ray


def test_train_epoch_lowers_the_loss(trained):
    _, losses = trained
    assert losses[-1] < 0.3 * losses[0], losses


def test_train_epoch_refuses_labels_beyond_the_classes(synth):
    _, feats, gt = synth
    cfg = make_cfg()
    model = Localizer(cfg.localizer, 2)
    with pytest.raises(ValueError, match="segment label 2 .* the localizer has 2 classes"):
        L.train_epoch(model, local_batches(cfg, feats, gt, TRAIN), torch.optim.SGD(model.parameters(), 0.1),
                      "cpu", False)


def test_save_load_and_warm_start_paths(tmp_path, trained):
    path, _ = trained
    model = L.load_localizer(path)
    assert not model.training and model.num_classes == C and model.cfg == make_cfg().localizer
    cfg = make_cfg()
    assert L.base_loop_config(cfg, tmp_path, 1)["warm_start"] == ""  # no cycle 0 yet
    previous = tmp_path / "checkpoints" / "cycle=0" / "model.pt"
    previous.parent.mkdir(parents=True)
    previous.write_bytes(path.read_bytes())
    loop = L.base_loop_config(cfg, tmp_path, 1)
    assert loop["warm_start"] == str(previous.resolve()) and loop["seed"] == cfg.seed + 1
    assert L.base_loop_config(replace(cfg, train=replace(cfg.train, warm_start=False)), tmp_path, 1)[
        "warm_start"] == ""
    fresh = Localizer(cfg.localizer, C)
    L._warm_start(fresh, loop["warm_start"])
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    with pytest.raises(ValueError, match="does not fit this one"):
        L._warm_start(Localizer(cfg.localizer, C + 1), loop["warm_start"])


@pytest.mark.parametrize("score", ["tpe", "tci", "random"])
def test_score_video(score, synth, trained):
    _, feats, _ = synth
    cfg = make_cfg(score=score, aggregation="max")
    model = L.load_localizer(trained[0])
    x = L._video_tensor(feats.set_index("video_id").loc["v12", "path"], "cpu")
    value, det = L.score_video(model, x, "v12", 4, cfg.alstal)
    again, det_again = L.score_video(model, x, "v12", 4, cfg.alstal)
    if score == "random":
        assert math.isnan(value)  # no MC passes
    else:
        assert 0.0 <= value <= math.log(C) and value == again  # max of per-location entropies / gaps
    assert not model.training  # MC dropout left the model in eval mode
    for key in det:
        np.testing.assert_array_equal(det[key], det_again[key])
    assert len(det["scores"]) and (np.diff(det["scores"]) <= 0).all()


def test_predictions_are_in_seconds_and_named(synth, trained, tmp_path):
    _, feats, gt = synth
    cfg = make_cfg()
    odd = feats.assign(fps=np.where(feats["video_id"] == "v10", 30.0, FPS),
                       snippet_stride=np.where(feats["video_id"] == "v10", 8, STRIDE))
    preds = L.predict_videos(cfg, odd, trained[0], ["v10", "v11"], CLASSES)
    model = L.load_localizer(trained[0])
    with torch.no_grad():
        det = L.detections(model(L._video_tensor(feats["path"].iloc[10], "cpu")), cfg.alstal)
    mine = [p for p in preds if p["video"] == "v10"]
    assert len(mine) == len(det["scores"]) and {p["video"] for p in preds} == {"v10", "v11"}
    np.testing.assert_allclose([[p["t_start"], p["t_end"]] for p in mine], det["segments"] * 8 / 30.0)
    assert [p["label"] for p in mine] == [CLASSES[c] for c in det["labels"]]
    assert [p["score"] for p in mine] == pytest.approx(det["scores"].tolist())
    doc = L.tal_document(gt, preds, ["v10", "v11"], CLASSES)
    assert {g["video"] for g in doc["ground_truth"]} == {"v10", "v11"}
    assert len(doc["ground_truth"]) == int(gt["video_id"].isin(["v10", "v11"]).sum())
    assert {g["label"] for g in doc["ground_truth"]} <= set(CLASSES)


def test_training_refuses_an_unset_feature_dim(tmp_path):
    cfg = make_cfg()
    cfg = replace(cfg, localizer=replace(cfg.localizer, feature_dim=0))
    with pytest.raises(ValueError, match="feature_dim is 0"):
        L.train_localizer_cycle(cfg, tmp_path, 0, None, C)


# ---------------------------------------------------------------- on Ray


@pytest.mark.ray
@pytest.mark.slow
def test_a_ray_train_cycle_learns_the_held_out_segments(ray_local, synth, tmp_path, monkeypatch):
    # Ray Train's controller collects each report when it polls the workers, every 2 s by default: a
    # floor of 2 s per epoch, 40 s of this test's 20 epochs of 0.2 s (the driver's value is propagated)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
    _, feats, gt = synth
    cfg = make_cfg()
    dataset = L.training_windows(cfg, feats, gt[gt["video_id"].isin(TRAIN)], TRAIN, seed=cfg.seed)
    result = L.train_localizer_cycle(cfg, tmp_path, 0, dataset, C)
    losses = [h["total"] for h in result.history]
    assert len(losses) == cfg.train.epochs and losses[-1] < 0.3 * losses[0], losses
    assert all(h["windows"] == result.history[0]["windows"] > 0 for h in result.history)
    assert result.checkpoint == tmp_path / "checkpoints" / "cycle=0" / "model.pt"
    before = L.evaluate_videos(cfg, feats, untrained(cfg, tmp_path / "untrained.pt"), gt, HELD_OUT, CLASSES)
    after = L.evaluate_videos(cfg, feats, result.checkpoint, gt, HELD_OUT, CLASSES)
    # measured: untrained 0.01, trained 0.87; in-process over five seeds 0.75-0.88
    assert after["map"]["0.5"] > 0.6 and after["map"]["0.5"] > before["map"]["0.5"] + 0.5, (before, after)


@pytest.mark.ray
@pytest.mark.slow
def test_scores_and_pseudo_labels_depend_neither_on_the_pool_size_nor_the_process(ray_local, synth, trained):
    _, feats, _ = synth
    cfg = make_cfg(aggregation="sum", pseudo_threshold=0.3)
    cfg = replace(cfg, score=replace(cfg.score, trials=4))
    unlabelled = HELD_OUT
    runs = []
    for actors in (1, 2):
        run = replace(cfg, score=replace(cfg.score, actors=actors, cpus_per_actor=1.0))
        runs.append(L.score_videos(run, feats, trained[0], unlabelled))
    in_process = replace(cfg, ray=replace(cfg.ray, in_process=True))
    runs.append(L.score_videos(in_process, feats, trained[0], unlabelled))
    (scores, pseudo), *others = runs  # 1 actor, 2 actors, in this process (a sweep trial)
    for scores2, pseudo2 in others:
        pd.testing.assert_frame_equal(scores, scores2)
        pd.testing.assert_frame_equal(pseudo, pseudo2)
    assert scores["video_id"].tolist() == unlabelled
    # TPE summed over every location of every level: within [0, N ln C]
    n = feats.set_index("video_id").loc[unlabelled, "snippets"].map(
        lambda t: sum(math.ceil(t / s) for s in (1, 2, 4))).to_numpy()
    assert np.isfinite(scores["score"]).all()
    assert ((scores["score"] > 0) & (scores["score"] <= n * math.log(C))).all()
    # the pool computes what one process does
    model = L.load_localizer(trained[0])
    row = feats.set_index("video_id").loc["v12"]
    local, det = L.score_video(model, L._video_tensor(row["path"], "cpu"), "v12", 4, cfg.alstal)
    assert scores.set_index("video_id").loc["v12", "score"] == pytest.approx(local, rel=1e-9)
    assert len(pseudo) > 0 and (pseudo["score"] >= 0.3).all()
    assert set(pseudo["video_id"]) <= set(unlabelled) and pseudo["label"].between(0, C - 1).all()
    mine = pseudo[pseudo["video_id"] == "v12"]
    kept = det["scores"] >= 0.3
    np.testing.assert_allclose(mine[["t_start", "t_end"]].to_numpy(), det["segments"][kept] * STRIDE / FPS)


def test_the_localizer_trains_in_process_on_local_windows(synth, tmp_path, one_torch_thread):
    """`ray.in_process` (sweep trials): the same windows as a LocalDataset, the same worker function."""
    from raylab.data.local import LocalDataset

    _, feats, gt = synth
    cfg = make_cfg()
    cfg = replace(cfg, ray=replace(cfg.ray, in_process=True))
    dataset = L.training_windows(cfg, feats, gt[gt["video_id"].isin(TRAIN)], TRAIN, seed=cfg.seed)
    assert isinstance(dataset, LocalDataset)
    result = L.train_localizer_cycle(cfg, tmp_path, 0, dataset, C)
    losses = [h["total"] for h in result.history]
    assert len(losses) == cfg.train.epochs and losses[-1] < 0.3 * losses[0], losses
    assert not (tmp_path / "ray_train").exists()
    after = L.evaluate_videos(cfg, feats, result.checkpoint, gt, HELD_OUT, CLASSES)
    assert after["map"]["0.5"] > 0.6, after
