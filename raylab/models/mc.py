"""MC-dropout at inference: dropout layers on, everything else (BatchNorm above all) in eval mode.

The detector's dropout sits at the start of `decode`, so `mc_forward` runs the encoder once per batch
and the decoder `trials` times; `mc_forward_full` runs `trials` full passes and is the reference the
tests compare it with. With the same `seed` both draw the same dropout masks and agree exactly.

`seed` takes one int (trial i draws the whole batch's masks from seed + i, through torch's RNG) or one
int per sample (`per_sample_seeds`): then sample b's mask in trial i comes from a generator of its own,
seeded by (seeds[b], i, call), so a clip gets the same masks in any batch, in a pool of any size or
order (on one kind of device: CPU and CUDA generators draw different streams). Scoring uses the latter
(raylab/score.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_CHANNEL_DROPOUT = (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)  # one mask value per (sample, channel)


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


def _mix(*keys: int) -> int:
    """A 63-bit seed from integer keys (numpy's SeedSequence hashing: nearby keys give unrelated seeds)."""
    hi, lo = np.random.SeedSequence([int(k) % 2**64 for k in keys]).generate_state(2, np.uint32)
    return (int(hi) << 31) ^ int(lo)


@contextmanager
def per_sample_seeds(model: nn.Module, seeds: Sequence[int], trial: int):
    """Within this block, every dropout module of `model` draws sample b's mask from its own generator,
    seeded by (seeds[b], trial, n) for the module's n-th call of the block (a module called on several
    inputs, like the localizer's per level, gets a mask per call), instead of from torch's global RNG.

    The dropout modules are switched to eval (identity) and a forward hook applies the masks, inverted
    dropout as torch does it: kept values are scaled by 1 / (1 - p). Masks are drawn on the input's
    device (a generator per sample there). Supports Dropout and Dropout1d/2d/3d (one value per channel).
    """
    seeds = [int(s) for s in seeds]
    calls = [0]

    def hook(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
        if len(seeds) != output.shape[0]:
            raise ValueError(f"{len(seeds)} per-sample seeds for a batch of {output.shape[0]}")
        shape = output.shape[1:]
        if isinstance(module, _CHANNEL_DROPOUT):
            shape = shape[:1] + (1,) * (len(shape) - 1)
        keep = 1.0 - module.p
        masks = torch.empty((len(seeds), *shape), device=output.device)
        for b, s in enumerate(seeds):
            g = torch.Generator(device=output.device).manual_seed(_mix(s, trial, calls[0]))
            masks[b].bernoulli_(keep, generator=g)
        calls[0] += 1
        scale = masks.div_(keep) if keep > 0 else masks
        return output * scale.to(dtype=output.dtype)

    modules = [m for m in model.modules() if isinstance(m, _DROPOUT)]
    unsupported = [type(m).__name__ for m in modules if type(m) not in (nn.Dropout, *_CHANNEL_DROPOUT)]
    if unsupported:
        raise NotImplementedError(f"per-sample dropout seeds do not support {sorted(set(unsupported))}")
    was_training = [m.training for m in modules]
    handles = [m.register_forward_hook(hook) for m in modules]
    for m in modules:
        m.eval()  # identity: the hook applies the mask
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for m, training in zip(modules, was_training):
            m.train(training)


@contextmanager
def _trial_masks(model: nn.Module, seed, trial: int, device: torch.device):
    """The RNG of trial `trial`: torch's global one (seed None), seed + trial, or per-sample seeds."""
    if seed is None or isinstance(seed, (int, np.integer)):
        with trial_rng(None if seed is None else int(seed) + trial, device):
            yield
    else:
        with per_sample_seeds(model, seed, trial):
            yield


@torch.no_grad()
def mc_forward(model: nn.Module, x: torch.Tensor, trials: int, seed: int | Sequence[int] | None = None):
    """MC-dropout predictions with the encoder run once and the decoder `trials` times.

    Args:
        model: a Detector (anything with `encode` and `decode`); put in MC mode here.
        x: clips float [B, 3, T, H, W].
        trials: number of dropout samples (T of ASL Eq.1).
        seed: None: the global RNG. An int: trial i draws its masks from seed + i (reproducible for this
            batch; equal to `mc_forward_full` with the same seed). B ints: sample b's masks come from
            seeds[b] alone (`per_sample_seeds`): a clip scores the same whatever batch it is in.

    Returns:
        fg_probs float [trials, B, T, H, W] (sigmoid of the foreground logits),
        class_probs float [trials, B, C]; each trial conditions the localization on its predicted class.
    """
    enable_mc_dropout(model)
    feats = model.encode(x)  # deterministic: no dropout inside the encoder
    fg, cls = [], []
    for i in range(trials):
        with _trial_masks(model, seed, i, x.device):
            out = model.decode(feats)
        fg.append(torch.sigmoid(out["fg_logits"]))
        cls.append(out["class_probs"])
    return torch.stack(fg), torch.stack(cls)


@torch.no_grad()
def mc_forward_full(model: nn.Module, x: torch.Tensor, trials: int, seed: int | Sequence[int] | None = None):
    """Reference for `mc_forward`: `trials` full forward passes (encoder included). Same returns."""
    enable_mc_dropout(model)
    fg, cls = [], []
    for i in range(trials):
        with _trial_masks(model, seed, i, x.device):
            out = model(x)
        fg.append(torch.sigmoid(out["fg_logits"]))
        cls.append(out["class_probs"])
    return torch.stack(fg), torch.stack(cls)
