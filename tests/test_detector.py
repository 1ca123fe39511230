"""The ASL detector and MC-dropout: shapes, config, weights, shared-encoder MC exactness, learning."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raylab.config import ConfigError
from raylab.losses import detector_loss
from raylab.models.detector import (
    CLIP_MEAN,
    CLIP_STD,
    Detector,
    DetectorConfig,
    batch_tensors,
    clips_to_tensor,
    frame_differences,
    random_crop,
    self_challenge,
    squash,
)
from raylab.models.mc import enable_mc_dropout, mc_forward, mc_forward_full


def moving_squares(n: int = 4, t: int = 8, h: int = 32, w: int = 32, size: int = 8, seed: int = 0):
    """Clips of a white square moving right (class 0) or down (class 1); fg is the square."""
    rng = np.random.default_rng(seed)
    clip = np.zeros((n, t, h, w, 3), np.uint8)  # [B, T, H, W, 3]
    fg = np.zeros((n, t, h, w), np.uint8)  # [B, T, H, W]
    label = np.arange(n) % 2
    for i in range(n):
        y0, x0 = rng.integers(0, h - size - t), rng.integers(0, w - size - t)
        for f in range(t):
            y, x = (y0, x0 + f) if label[i] == 0 else (y0 + f, x0)
            clip[i, f, y : y + size, x : x + size] = 255
            fg[i, f, y : y + size, x : x + size] = 1
    return {"clip": clip, "fg": fg, "label": label.astype(np.int32), "weight": np.ones((n, t), np.float32)}


def test_batch_tensors_types():
    t = batch_tensors(moving_squares(n=2, t=4, h=16, w=16, size=4))
    assert t["clip"].shape == (2, 3, 4, 16, 16) and t["label"].dtype == torch.int64
    assert t["fg"].dtype == torch.float32 and t["weight"].shape == (2, 4)


def test_config_presets_and_validation():
    cfg = DetectorConfig()
    assert cfg.widths == (24, 48, 64) and cfg.depth == 2 and cfg.strides == (2, 8)
    assert DetectorConfig(preset="i3d_like").strides == (4, 16)
    assert DetectorConfig(widths=[8, 16], temporal_strides=[1, 2]).widths == (8, 16)
    for bad in ({"preset": "huge"}, {"head": "em"}, {"dropout": 1.0}, {"widths": (8, 16)},
                {"routing_iters": 0}, {"challenge": 1.0}, {"challenge": 0.3, "head": "capsules"}):
        with pytest.raises(ConfigError):
            DetectorConfig(**bad)


def test_clips_to_tensor_normalises():
    clip = np.zeros((1, 2, 4, 4, 3), np.uint8)
    clip[0, 1, 2, 3] = (255, 0, 128)
    x = clips_to_tensor(clip)
    assert x.shape == (1, 3, 2, 4, 4) and x.dtype == torch.float32
    rgb = (1.0, 0.0, 128 / 255)
    expected = [(v - m) / s for v, m, s in zip(rgb, CLIP_MEAN, CLIP_STD)]
    assert torch.allclose(x[0, :, 1, 2, 3], torch.tensor(expected))


@pytest.mark.parametrize("head", ["capsules", "linear"])
@pytest.mark.parametrize("size", [(8, 64, 64), (4, 32, 48), (16, 16, 24)])
def test_output_shapes(head, size):
    model = Detector(DetectorConfig(head=head), num_classes=5).eval()
    out = model(torch.randn(2, 3, *size))
    key = "class_lengths" if head == "capsules" else "class_logits"
    assert out[key].shape == (2, 5) and out["class_probs"].shape == (2, 5)
    assert out["fg_logits"].shape == (2, *size)
    assert torch.allclose(out["class_probs"].sum(-1), torch.ones(2))
    if head == "capsules":
        assert torch.all((out[key] >= 0) & (out[key] < 1))


def test_i3d_like_shapes_and_bad_size():
    model = Detector(DetectorConfig(preset="i3d_like"), num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 4, 16, 16))["fg_logits"].shape == (1, 4, 16, 16)
    with pytest.raises(ValueError, match="H, W of 16"):
        model(torch.randn(1, 3, 4, 24, 16))


def test_localization_is_class_conditioned():
    torch.manual_seed(0)
    model = Detector(DetectorConfig(), num_classes=3).eval()
    with torch.no_grad():
        feats = model.encode(torch.randn(2, 3, 8, 32, 32))
        a = model.decode(feats, torch.tensor([0, 0]))["fg_logits"]
        b = model.decode(feats, torch.tensor([1, 2]))["fg_logits"]
        predicted = model.decode(feats)
        unknown = model.decode(feats, torch.tensor([-1, -1]))["fg_logits"]
        onehot = model.decode(feats, torch.eye(3)[[1, 2]])["fg_logits"]
    assert not torch.allclose(a, b)
    assert torch.equal(unknown, predicted["fg_logits"])  # label -1: condition on the predicted class
    assert torch.equal(onehot, b)


def test_random_crop_keeps_frames_and_targets_aligned_and_one_is_no_crop():
    torch.manual_seed(0)
    tensors = batch_tensors(moving_squares(n=6, t=4, h=32, w=32, size=8))
    tensors["clip"] = (tensors["clip"] > 0).float()  # 1 on the square, 0 elsewhere, as fg
    out = random_crop(tensors, 0.6)
    assert out["clip"].shape == tensors["clip"].shape and out["fg"].shape == tensors["fg"].shape
    assert out["label"] is tensors["label"] and out["weight"] is tensors["weight"]
    torch.testing.assert_close(out["fg"], out["clip"][:, 0])  # the same window, resized the same way
    assert not torch.equal(out["fg"], tensors["fg"])
    # the window lies inside the clip: a clip that is all foreground stays all foreground (no padding)
    full = random_crop({**tensors, "fg": torch.ones_like(tensors["fg"])}, 0.6)
    torch.testing.assert_close(full["fg"], torch.ones_like(tensors["fg"]))
    assert random_crop(tensors, 1.0) is tensors


def test_self_challenge_mutes_the_features_that_carry_the_true_class_of_a_third_of_the_clips():
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 2, bias=False)
    with torch.no_grad():  # class 0 reads features 0-2, class 1 features 3-5; feature k weighs k + 1
        head.weight.copy_(torch.tensor([[1.0, 2, 3, 0, 0, 0], [0, 0, 0, 4, 5, 6]]))
    features = torch.ones(3000, 6)
    labels = torch.tensor([0, 1, -1]).repeat(1000)
    logits = self_challenge(features, head, labels, share=0.34)  # mutes ceil(0.34 * 6) = 3 features
    plain = head(features)
    challenged = ~torch.isclose(logits, plain).all(1)
    # class 0 loses its three features, class 1 its three; a clip without a label is never challenged
    assert torch.equal(logits[challenged & (labels == 0)].unique(dim=0), torch.tensor([[0.0, 15.0]]))
    assert torch.equal(logits[challenged & (labels == 1)].unique(dim=0), torch.tensor([[6.0, 0.0]]))
    assert not challenged[labels == -1].any()
    share = challenged[labels >= 0].float().mean().item()
    assert abs(share - 1 / 3) < 0.04, share


def test_challenge_acts_in_training_only():
    cfg = DetectorConfig(widths=(8, 16), temporal_strides=(1, 2), challenge=0.5, dropout=0.0)
    torch.manual_seed(0)
    model = Detector(cfg, 2)
    plain = Detector(DetectorConfig(widths=(8, 16), temporal_strides=(1, 2), dropout=0.0), 2)
    plain.load_state_dict(model.state_dict())
    x = clips_to_tensor(moving_squares(n=6, t=4, h=16, w=16, size=4)["clip"])
    labels = torch.tensor([0, 1] * 3)
    model.eval(), plain.eval()
    torch.testing.assert_close(model(x, labels)["class_logits"], plain(x, labels)["class_logits"])
    model.train(), plain.train()  # batch norm uses the batch's statistics in both
    torch.manual_seed(1)
    logits = model(x, labels)["class_logits"]
    assert not torch.allclose(logits, plain(x, labels)["class_logits"])


def test_frame_differences_cancel_the_static_scene_and_feed_a_six_channel_encoder():
    x = clips_to_tensor(moving_squares(n=2, t=4, h=16, w=16, size=4)["clip"])  # [2, 3, 4, 16, 16]
    diff = frame_differences(x)
    assert diff.shape == x.shape and torch.all(diff[:, :, 0] == 0)
    torch.testing.assert_close(diff[:, :, 2], x[:, :, 2] - x[:, :, 1])
    assert torch.all(frame_differences(x[:, :, :1].expand_as(x)) == 0)  # a still clip: nothing moved
    model = Detector(DetectorConfig(widths=(8, 16), temporal_strides=(1, 2), frame_diff=True), 2)
    assert model.stages[0][0][0].in_channels == 6
    assert model(x)["fg_logits"].shape == (2, 4, 16, 16)


def test_squash_is_finite_at_zero():
    s = torch.zeros(3, 8, requires_grad=True)
    v = squash(s)
    v.sum().backward()
    assert torch.all(v == 0) and torch.isfinite(s.grad).all()


def test_weights_round_trip_and_mismatch(tmp_path):
    torch.manual_seed(0)
    model = Detector(DetectorConfig(), num_classes=4).eval()
    path = tmp_path / "det.pt"
    torch.save(model.state_dict(), path)
    loaded = Detector(DetectorConfig(weights=str(path)), num_classes=4).eval()
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x)["fg_logits"], loaded(x)["fg_logits"])
    with pytest.raises(ValueError, match="det.pt.*shape mismatches"):
        Detector(DetectorConfig(weights=str(path)), num_classes=3)
    with pytest.raises(ValueError, match="det.pt.*missing"):
        Detector(DetectorConfig(weights=str(path), head="capsules"), num_classes=4)  # not the default head
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        Detector(DetectorConfig(weights=str(tmp_path / "nope.pt")), num_classes=4)


def _trained_bn_model() -> Detector:
    """A small detector whose BatchNorm running stats differ from their initial values."""
    torch.manual_seed(0)
    model = Detector(DetectorConfig(), num_classes=3).train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(2, 3, 8, 32, 32) * 2 + 1, torch.tensor([0, 1]))
    return model


def test_mc_dropout_switches_on_dropout_only():
    model = enable_mc_dropout(_trained_bn_model())
    kinds = {type(m).__name__: m.training for m in model.modules() if not list(m.children())}
    assert kinds["Dropout"] is True
    assert kinds["BatchNorm3d"] is False and kinds["Conv3d"] is False


def test_shared_encoder_mc_equals_full_passes():
    """Encoder once + decoder T times == T full passes, given the same dropout masks.

    Both paths seed trial i's RNG with seed + i before drawing its masks. The encoder draws no random
    numbers (dropout sits after it), so each trial's decoder consumes the same random stream and gets
    the same masks in both paths; the encoder is deterministic in eval mode, so its features are the
    same too. The outputs agree to float rounding (bit-equal on CPU in practice).
    """
    model = _trained_bn_model()
    bn_before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    x = torch.randn(2, 3, 8, 32, 32)
    rng_before = torch.get_rng_state()
    fg, cls = mc_forward(model, x, trials=4, seed=7)
    fg_full, cls_full = mc_forward_full(model, x, trials=4, seed=7)
    assert torch.equal(torch.get_rng_state(), rng_before)  # seeded MC leaves the caller's RNG alone
    assert fg.shape == (4, 2, 8, 32, 32) and cls.shape == (4, 2, 3)
    assert torch.allclose(fg, fg_full, rtol=0, atol=1e-6) and torch.allclose(cls, cls_full, rtol=0, atol=1e-6)
    assert not torch.allclose(fg[0], fg[1])  # dropout is really on: trials differ
    again, _ = mc_forward(model, x, trials=4, seed=7)
    assert torch.equal(again, fg)
    for k, v in model.state_dict().items():
        if "running" in k:
            assert torch.equal(v, bn_before[k]), f"BatchNorm stat {k} changed during MC-dropout"
    fg_unseeded, _ = mc_forward(model, x, trials=2)
    assert fg_unseeded.shape == (2, 2, 8, 32, 32) and torch.all((fg_unseeded >= 0) & (fg_unseeded <= 1))


def test_detector_overfits_tiny_batch():
    """A real learning check: 100 Adam steps on 4 clips cut the localization loss by more than 5x and
    the predicted foreground covers the squares."""
    torch.manual_seed(0)
    batch = batch_tensors(moving_squares())
    model = Detector(DetectorConfig(), num_classes=2)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def evaluate():
        model.eval()
        with torch.no_grad():
            out = model(batch["clip"])
            return detector_loss(out, batch), out["class_probs"].argmax(-1), out["fg_logits"] > 0

    before, _, _ = evaluate()
    for _ in range(100):
        model.train()
        loss = detector_loss(model(batch["clip"], batch["label"]), batch)
        opt.zero_grad()
        loss["total"].backward()
        opt.step()
    after, predicted, fg = evaluate()
    assert torch.isfinite(after["total"])
    assert after["localization"] < before["localization"] / 5
    target = batch["fg"] > 0
    assert (fg & target).sum() / (fg | target).sum() > 0.5  # pixel IoU of the foreground
    assert torch.equal(predicted, batch["label"])
