"""MC-dropout at inference: dropout layers on, everything else (BatchNorm above all) in eval mode.

The detector's dropout sits at the start of `decode`, so `mc_forward` runs the encoder once per batch
and the decoder `trials` times; `mc_forward_full` runs `trials` full passes and is the reference the
tests compare it with. With the same `seed` both draw the same dropout masks and agree exactly.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def enable_mc_dropout(model: nn.Module) -> nn.Module:
    """Put the model in eval mode, then switch only its dropout modules to train mode (never
    `model.train()`, which would let BatchNorm use batch statistics and update its running stats)."""
    model.eval()
    for m in model.modules():
        if isinstance(m, _DROPOUT):
            m.train()
    return model


@contextmanager
def trial_rng(seed: int | None, device: torch.device):
    """Draw the trial's dropout masks from `seed` without disturbing the caller's RNG state."""
    if seed is None:
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def mc_forward(model: nn.Module, x: torch.Tensor, trials: int, seed: int | None = None):
    """MC-dropout predictions with the encoder run once and the decoder `trials` times.

    Args:
        model: a Detector (anything with `encode` and `decode`); put in MC mode here.
        x: clips float [B, 3, T, H, W].
        trials: number of dropout samples (T of ASL Eq.1).
        seed: when given, trial i draws its masks from seed + i (reproducible; equal to `mc_forward_full`
            with the same seed). None: the global RNG.

    Returns:
        fg_probs float [trials, B, T, H, W] (sigmoid of the foreground logits),
        class_probs float [trials, B, C]; each trial conditions the localization on its predicted class.
    """
    enable_mc_dropout(model)
    feats = model.encode(x)  # deterministic: no dropout inside the encoder
    fg, cls = [], []
    for i in range(trials):
        with trial_rng(None if seed is None else seed + i, x.device):
            out = model.decode(feats)
        fg.append(torch.sigmoid(out["fg_logits"]))
        cls.append(out["class_probs"])
    return torch.stack(fg), torch.stack(cls)


@torch.no_grad()
def mc_forward_full(model: nn.Module, x: torch.Tensor, trials: int, seed: int | None = None):
    """Reference for `mc_forward`: `trials` full forward passes (encoder included). Same returns."""
    enable_mc_dropout(model)
    fg, cls = [], []
    for i in range(trials):
        with trial_rng(None if seed is None else seed + i, x.device):
            out = model(x)
        fg.append(torch.sigmoid(out["fg_logits"]))
        cls.append(out["class_probs"])
    return torch.stack(fg), torch.stack(cls)
