"""Snippet features: the time axis, the default encoder, extraction on Ray Data, and both reading layouts."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from raylab.config import FeatureConfig
from raylab.data.video import VideoError
from raylab.features import (
    FEATURES_FILE,
    encode_video,
    extract_features,
    feature_file,
    load_features,
    num_snippets,
    seconds_to_snippets,
    snippet_frame_indices,
    snippets_to_seconds,
)
from raylab.models.snippet_encoder import SnippetEncoder, encoder_dim, load_encoder
from tests.conftest import tiny_synth_set

CFG = FeatureConfig()


@pytest.fixture(scope="module")
def temporal_set(tmp_path_factory):
    """The tiny temporal SynthActions set: (root, meta, index with absolute paths, segments)."""
    return tiny_synth_set(tmp_path_factory, "temporal")


@pytest.fixture(scope="module")
def tiny_features(temporal_set):
    """Default-encoder features of every tiny video, computed in this process: video_id -> [T, D]."""
    _, _, index, _ = temporal_set
    encoder = load_encoder(CFG)
    return {r.video_id: encode_video(r.path, r.num_frames, encoder, CFG) for r in index.itertuples()}


# ---- time axis -------------------------------------------------------------------------------------


def test_snippets_cover_every_frame_and_repeat_the_last():
    cfg = FeatureConfig(snippet_frames=8, snippet_stride=4)
    assert num_snippets(10, 4) == 3  # ceil(10 / 4)
    assert num_snippets([1, 4, 5, 8, 9], 4).tolist() == [1, 1, 2, 2, 3]
    idx = snippet_frame_indices(0, 3, 10, cfg)
    assert idx.tolist() == [[0, 1, 2, 3, 4, 5, 6, 7], [4, 5, 6, 7, 8, 9, 9, 9], [8, 9, 9, 9, 9, 9, 9, 9]]
    assert snippet_frame_indices(2, 1, 10, cfg).tolist() == idx[2:].tolist()


def test_seconds_and_snippets_convert_both_ways():
    assert seconds_to_snippets(1.0, 25.0, 4) == pytest.approx(6.25)  # 25 frames = 6.25 snippets of 4
    np.testing.assert_allclose(snippets_to_seconds([0, 1, 6.25], 25.0, 4), [0.0, 0.16, 1.0])
    # vectorised over videos of different fps and strides
    np.testing.assert_allclose(seconds_to_snippets([2.0, 2.0], [30.0, 25.0], [4, 5]), [15.0, 10.0])
    t = np.array([[0.52, 1.48], [3.2, 3.8]])
    np.testing.assert_allclose(snippets_to_seconds(seconds_to_snippets(t, 29.97, 8), 29.97, 8), t)
    for fps, stride in ((0, 4), (25, 0), (np.nan, 4)):
        with pytest.raises(ValueError, match="must be > 0"):
            seconds_to_snippets(1.0, fps, stride)


# ---- encoders --------------------------------------------------------------------------------------


def test_default_encoder_is_seeded_frozen_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = SnippetEncoder()
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(7)
    b = SnippetEncoder()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not list(a.parameters())  # nothing to train
    x = torch.rand(3, 3, 8, 64, 64, generator=torch.Generator().manual_seed(1))  # [B, 3, T, H, W]
    y = a(x)
    assert y.shape == (3, 128) and y.dtype == torch.float32
    assert torch.equal(y, b(x))
    # another batch may change the last float bits (the conv kernels block the batch), no more
    torch.testing.assert_close(a(x[1:2]), y[1:2], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        a(torch.zeros(2, 8, 64, 64))


def test_default_encoder_is_the_same_in_a_fresh_process():
    code = ("import torch; from raylab.models.snippet_encoder import SnippetEncoder;"
            "x = torch.rand(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1));"
            "print(repr(SnippetEncoder()(x).double().sum().item()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    x = torch.rand(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    assert float(out) == SnippetEncoder()(x).double().sum().item()


class _Pool(torch.nn.Module):
    def __init__(self, squeeze: bool):
        super().__init__()
        self.squeeze = squeeze

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.mean(dim=(2, 3, 4))  # [B, 3]
        return y.sum(1) if self.squeeze else y


def test_load_encoder_torchscript_checks_its_file(tmp_path):
    good, flat, junk = tmp_path / "good.pt", tmp_path / "flat.pt", tmp_path / "junk.pt"
    torch.jit.script(_Pool(False)).save(str(good))
    torch.jit.script(_Pool(True)).save(str(flat))
    junk.write_bytes(b"not a model")
    cfg = FeatureConfig(encoder="torchscript", encoder_weights=str(good))
    assert encoder_dim(load_encoder(cfg), cfg) == 3
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_encoder(FeatureConfig(encoder="torchscript", encoder_weights=str(tmp_path / "missing.pt")))
    with pytest.raises(ValueError, match=r"flat.pt must return features \[B, D\].*returned \[2\]"):
        load_encoder(FeatureConfig(encoder="torchscript", encoder_weights=str(flat)))
    with pytest.raises(ValueError, match="junk.pt is not a TorchScript module"):
        load_encoder(FeatureConfig(encoder="torchscript", encoder_weights=str(junk)))


def _centroid(z_train, y_train, z_test, classes):
    centroids = torch.stack([z_train[y_train == c].mean(0) for c in classes])
    return classes[torch.cdist(z_test, centroids).argmin(1).numpy()]


def _logistic(z_train, y_train, z_test, classes):
    """L2-regularised logistic regression; convex, so a zero start is as good as any."""
    lin = torch.nn.Linear(z_train.shape[1], len(classes))
    torch.nn.init.zeros_(lin.weight), torch.nn.init.zeros_(lin.bias)
    target = torch.as_tensor(np.searchsorted(classes, y_train))
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=100)

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.cross_entropy(lin(z_train), target) + 1e-2 * lin.weight.square().sum()
        value.backward()
        return value

    opt.step(loss)
    return classes[lin(z_test).argmax(1).detach().numpy()]


def _balanced_lovo(x: np.ndarray, y: np.ndarray, video: np.ndarray, classify) -> float:
    """Balanced accuracy on each held-out video (trained on the others), averaged over videos."""
    scores = []
    for v in np.unique(video):
        train, test = video != v, video == v
        mu, sd = x[train].mean(0), x[train].std(0) + 1e-6
        z = torch.tensor((x - mu) / sd, dtype=torch.float32)
        pred = classify(z[train], y[train], z[test], np.unique(y[train]))
        scores.append(np.mean([(pred[y[test] == c] == c).mean() for c in np.unique(y[test])]))
    return float(np.mean(scores))


def test_default_features_separate_actions_from_idle_and_each_other(temporal_set, tiny_features):
    _, meta, index, gt = temporal_set
    xs, labels, videos = [], [], []
    for k, r in enumerate(index.itertuples()):
        feats = tiny_features[r.video_id]  # [T, D]
        first = np.arange(len(feats)) * CFG.snippet_stride  # first frame of each snippet
        label = np.full(len(feats), -2)  # -2: straddles a boundary, -1: idle, else the class
        idle = np.ones(len(feats), dtype=bool)
        for s in gt[gt.video_id == r.video_id].itertuples():
            start, end = s.t_start * r.fps, s.t_end * r.fps
            label[(first >= start) & (first + CFG.snippet_frames <= end)] = s.label
            idle &= (first + CFG.snippet_frames <= start) | (first >= end)
        label[idle] = -1
        xs.append(feats), labels.append(label), videos.append(np.full(len(feats), k))
    x, y, video = np.concatenate(xs), np.concatenate(labels), np.concatenate(videos)
    act, known = y >= 0, y >= -1
    # measured: 0.62 (logistic) for 3 classes, chance 0.33; 0.85 (centroid) for action vs idle, chance 0.5
    assert _balanced_lovo(x[act], y[act], video[act], _logistic) > 0.5
    assert _balanced_lovo(x[known], (y[known] >= 0).astype(int), video[known], _centroid) > 0.75


# ---- one video ---------------------------------------------------------------------------------------


def test_encode_video_decodes_only_the_frames_its_snippets_use(blob_video, monkeypatch):
    import raylab.features as features

    path, _ = blob_video  # 16 frames
    asked = []

    def spy(p, frames, size):
        asked.append(np.asarray(frames).tolist())
        return real(p, frames, size)

    real = features.read_frames
    monkeypatch.setattr(features, "read_frames", spy)
    cfg = FeatureConfig(snippet_frames=2, snippet_stride=6, height=32, width=64)
    out = encode_video(path, 16, SnippetEncoder(), cfg)
    assert out.shape == (3, 128) and out.dtype == np.float32  # ceil(16 / 6) snippets
    assert asked == [[0, 1, 6, 7, 12, 13]]


def test_encode_video_reports_broken_files(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(VideoError, match="junk.mp4"):
        encode_video(junk, 20, SnippetEncoder(), CFG)


def test_feature_file_stays_inside_the_folder(tmp_path):
    assert feature_file(tmp_path, "videos/a") == tmp_path / "videos" / "a.npy"
    for bad in ("../a", "/etc/a", "a/../../b", ""):
        with pytest.raises(ValueError, match="cannot name a file"):
            feature_file(tmp_path, bad)


# ---- extraction (Ray) --------------------------------------------------------------------------------


@pytest.mark.ray
def test_extract_features_writes_resumes_and_lists_broken_videos(ray_local, temporal_set, tiny_features,
                                                                  tmp_path):
    root, _, index, _ = temporal_set
    junk = tmp_path / "broken.mp4"
    junk.write_bytes(np.random.default_rng(0).bytes(10_000))
    broken = pd.DataFrame([{"video_id": "broken/clip", "path": str(junk), "num_frames": 100, "fps": 25.0}])
    videos = pd.concat([index, broken], ignore_index=True)
    out = tmp_path / "features"

    extract_features(root, videos, out, CFG, actors=2)
    manifest = json.loads((out / FEATURES_FILE).read_text())
    expected = {"encoder": "default", "dim": 128, "snippet_frames": 8, "snippet_stride": 4, "height": 64,
                "width": 64}
    assert {k: manifest[k] for k in expected} == expected
    assert set(manifest["failed"]) == {"broken/clip"}
    assert manifest["failed"]["broken/clip"]["path"] == str(junk)
    assert "cannot open" in manifest["failed"]["broken/clip"]["reason"]
    for r in index.itertuples():
        assert manifest["videos"][r.video_id] == {"fps": r.fps, "num_frames": r.num_frames,
                                                  "snippets": -(-r.num_frames // 4)}
        feats = np.load(feature_file(out, r.video_id))
        # the actors' features equal this process's, bit for bit
        assert feats.dtype == np.float32 and np.array_equal(feats, tiny_features[r.video_id])

    # resume: only the deleted video is encoded again (the broken one is retried and fails again)
    redo = feature_file(out, index.video_id[2])
    redo.unlink()
    stamps = {v: feature_file(out, v).stat().st_mtime_ns for v in index.video_id if v != index.video_id[2]}
    extract_features(root, videos, out, CFG, actors=1)
    assert np.array_equal(np.load(redo), tiny_features[index.video_id[2]])
    assert {v: feature_file(out, v).stat().st_mtime_ns for v in stamps} == stamps
    assert json.loads((out / FEATURES_FILE).read_text()) == manifest
    assert not list(out.rglob("*.part"))

    table = load_features(out, index, CFG)
    assert table.columns.tolist() == ["video_id", "path", "snippets", "dim", "fps", "snippet_stride"]
    assert table["video_id"].tolist() == index["video_id"].tolist()
    assert table["snippets"].tolist() == [len(tiny_features[v]) for v in index.video_id]
    assert set(table["dim"]) == {128} and set(table["snippet_stride"]) == {4} and set(table["fps"]) == {25.0}
    with pytest.raises(ValueError, match=r"1 videos of the index have no features.*broken/clip \(failed"):
        load_features(out, videos, CFG)
    assert len(load_features(out, videos, CFG, allow_missing=True)) == len(index)


def test_extract_features_refuses_folders_it_cannot_reuse(temporal_set, tmp_path):
    root, _, index, _ = temporal_set
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    np.save(foreign / "a.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="no features.json"):
        extract_features(root, index, foreign, CFG)
    other = tmp_path / "other"
    other.mkdir()
    (other / FEATURES_FILE).write_text(json.dumps({"encoder": "default", "encoder_id": "snippet-encoder-v1",
                                                   "dim": 128, "snippet_frames": 8, "snippet_stride": 8,
                                                   "height": 64, "width": 64, "videos": {}, "failed": {}}))
    with pytest.raises(ValueError, match=r"snippet_stride=8 \(now 4\)"):
        extract_features(root, index, other, CFG)
    with pytest.raises(ValueError, match="needs columns"):
        extract_features(root, index.drop(columns="fps"), tmp_path / "new", CFG)


# ---- precomputed features ------------------------------------------------------------------------------


def _precomputed(folder, shapes: dict) -> pd.DataFrame:
    """One .npy per video (e.g. I3D features), no features.json; returns a matching index."""
    rng = np.random.default_rng(0)
    for vid, shape in shapes.items():
        path = folder / f"{vid}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, rng.standard_normal(shape).astype(np.float32))
    return pd.DataFrame({"video_id": list(shapes), "num_frames": [s[0] * 4 for s in shapes.values()],
                         "fps": 30.0})


def test_load_features_reads_precomputed_folders(tmp_path):
    index = _precomputed(tmp_path, {"video_test_0000004": (45, 2048), "val/video_0001": (20, 2048)})
    table = load_features(tmp_path, index, FeatureConfig(snippet_stride=4))
    assert table["video_id"].tolist() == index["video_id"].tolist()
    assert table["path"].tolist() == [str((tmp_path / f"{v}.npy").resolve()) for v in index.video_id]
    assert table["snippets"].tolist() == [45, 20] and set(table["dim"]) == {2048}
    assert set(table["fps"]) == {30.0} and set(table["snippet_stride"]) == {4}
    assert table.dtypes["snippets"] == np.int64 and table.dtypes["fps"] == np.float64
    # features.fps overrides the index's rate
    assert set(load_features(tmp_path, index, FeatureConfig(fps=10.0))["fps"]) == {10.0}
    with pytest.raises(ValueError, match="need an fps"):
        load_features(tmp_path, index.drop(columns="fps"), FeatureConfig())


def test_load_features_names_every_bad_file(tmp_path):
    index = _precomputed(tmp_path, {"a": (10, 8), "b": (10, 16), "c": (10,), "d": (0, 8)})
    with pytest.raises(ValueError) as e:
        load_features(tmp_path, index, CFG)
    text = str(e.value)
    assert "c.npy: shape (10,)" in text and "d.npy: shape (0, 8)" in text
    assert "different D" in text and "a.npy" in text and "b.npy" in text
    missing = pd.DataFrame({"video_id": ["a", "x/y", "z"], "fps": 30.0})
    with pytest.raises(ValueError, match="2 videos of the index have no features.*x/y, z"):
        load_features(tmp_path, missing, CFG)
    np.save(tmp_path / "nan.npy", np.array([[0.0, 1.0], [np.nan, 2.0]], np.float32))
    np.save(tmp_path / "ints.npy", np.ones((3, 2), np.int64))
    (tmp_path / "junk.npy").write_bytes(b"garbage")
    one = pd.DataFrame({"video_id": ["nan"], "fps": 30.0})
    assert len(load_features(tmp_path, one, CFG)) == 1  # values are not read by default
    with pytest.raises(ValueError, match="nan.npy: NaN or inf at snippet 1"):
        load_features(tmp_path, one, CFG, check_values=True)
    with pytest.raises(ValueError, match="ints.npy: dtype int64"):
        load_features(tmp_path, pd.DataFrame({"video_id": ["ints"], "fps": 30.0}), CFG)
    with pytest.raises(ValueError, match="junk.npy: not a readable .npy"):
        load_features(tmp_path, pd.DataFrame({"video_id": ["junk"], "fps": 30.0}), CFG)


def test_default_encoder_takes_a_state_dict_of_its_architecture(tmp_path):
    import torch

    from raylab.config import FeatureConfig
    from raylab.models.snippet_encoder import SnippetEncoder, load_encoder

    net = SnippetEncoder()
    state = {k: v * 2 for k, v in net.state_dict().items()}
    torch.save(state, tmp_path / "mine.pt")
    loaded = load_encoder(FeatureConfig(encoder_weights=str(tmp_path / "mine.pt")))
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
    torch.save({"not": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a state_dict of the default snippet encoder"):
        load_encoder(FeatureConfig(encoder_weights=str(tmp_path / "other.pt")))
