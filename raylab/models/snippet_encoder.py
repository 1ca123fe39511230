"""Frozen snippet encoders: a snippet of frames in, one feature vector out.

    snippet float [B, 3, T, H, W] in [0, 1] --encoder--> features float32 [B, D]

`SnippetEncoder` is the default: a small 3D-conv net whose weights are drawn once from a fixed seed
and never trained. Besides the frames (appearance) it sees their differences and a local velocity
estimate (motion), so that actions told apart by how something moves, not by how it looks, get
different features. Random frozen convolutions with global pooling are a baseline for SynthActions;
on real video use a pretrained encoder exported to TorchScript (`features.encoder: torchscript`) or
precomputed features.

Determinism: the weights come from their own `torch.Generator` (seed 0), so building the net neither
reads nor moves the global RNG, and every process builds the same weights bit for bit (same torch
version). The forward pass has no randomness: the same batch gives the same bits on the same machine
and torch build, whatever the thread count (checked on this project's CPU machine). The same snippet in
a batch of another size, or on another CPU, may differ in the last float bits.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from raylab.config import FeatureConfig

DEFAULT_SEED = 0
DEFAULT_ENCODER_ID = "snippet-encoder-v1"  # recorded in features.json: change it when the net changes
DEFAULT_WIDTHS = (32, 64, 128)  # channels of the three conv stages; D = the last
OPPONENT_GAIN = 2.0  # colour-opponent channels are small differences of RGB: scale them up
MOTION_GAIN = 4.0  # frame differences and velocities, brought to the scale of the colour channels
FLOW_WINDOW = 5  # pixels: side of the square window of the local velocity estimate
FLOW_EPS = 1e-2  # regularises the velocity estimate where the image is flat (no gradient, no motion)
MAX_SPEED = 4.0  # pixels per frame: velocity estimates are clipped to +-this
INPUT_CHANNELS = 13  # see SnippetEncoder


def colour_opponent(x: torch.Tensor) -> torch.Tensor:
    """RGB [B, 3, T, H, W] in [0, 1] -> luminance - 0.5, red-green and yellow-blue; [B, 3, T, H, W].

    The two opponent channels are ~0 on grey and strong on saturated colours.
    """
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    return torch.cat([(r + g + b) / 3 - 0.5, OPPONENT_GAIN * (r - g), OPPONENT_GAIN * ((r + g) / 2 - b)], 1)


def local_velocity(c: torch.Tensor, motion: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lucas-Kanade velocity in every pixel, from the gradients of all channels in a small window.

    Args:
        c: frames [B, C, T, H, W]; motion: their difference to the previous frame, same shape.

    Returns:
        vx, vy [B, 1, T, H, W] in pixels per frame (x to the right, y down), clipped to +-MAX_SPEED.
        The `FLOW_EPS` ridge pulls the estimate to 0 where the window has no texture.
    """
    padded = F.pad(c, (1, 1, 1, 1, 0, 0), mode="replicate")
    gx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) / 2  # [B, C, T, H, W] central differences
    gy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) / 2
    products = torch.stack([(gx * gx).sum(1), (gy * gy).sum(1), (gx * gy).sum(1),
                            -(motion * gx).sum(1), -(motion * gy).sum(1)], dim=1)  # [B, 5, T, H, W]
    pooled = _window_mean(products)
    sxx, syy, sxy, bx, by = pooled.unbind(1)  # [B, T, H, W] each; b = -sum g dI/dt (brightness constancy)
    sxx, syy = sxx + FLOW_EPS, syy + FLOW_EPS
    det = sxx * syy - sxy * sxy  # > 0: the ridge makes the 2x2 system positive definite
    vx = (syy * bx - sxy * by) / det
    vy = (sxx * by - sxy * bx) / det
    return vx.clamp(-MAX_SPEED, MAX_SPEED).unsqueeze(1), vy.clamp(-MAX_SPEED, MAX_SPEED).unsqueeze(1)


def _window_mean(z: torch.Tensor) -> torch.Tensor:
    """Mean over a FLOW_WINDOW x FLOW_WINDOW window (zeros outside the frame) of every [H, W] map of z.

    Box sums from cumulative sums along W, then H: on the CPU several times faster than avg_pool.
    """
    k, r = FLOW_WINDOW, FLOW_WINDOW // 2
    c = F.pad(z, (r + 1, r)).cumsum(-1)  # [..., H, W + k]: c[..., j] = sum of the padded row before j
    rows = c[..., k:] - c[..., :-k]  # [..., H, W]
    c = F.pad(rows, (0, 0, r + 1, r)).cumsum(-2)
    return (c[..., k:, :] - c[..., :-k, :]) / (k * k)


class SnippetEncoder(nn.Module):
    """Three seeded 3D-conv stages (kernel 3, stride 2 in T, H and W, ReLU), then global pooling.

    Input channels (13), each [B, 1 or 3, T, H, W]: `colour_opponent` of the frames (3); their
    difference to the previous frame (3, zero at the first frame) and its absolute value (3); the
    `local_velocity` vx, vy and their absolute values (4); motion channels times `MOTION_GAIN`.
    The velocities say which way things move (sideways, up and down, turning), which frame
    differences alone blur together. Pooling over T, H and W: the mean of the first half of the last
    stage's channels (how much of the snippet shows a pattern) and the max of the second half
    (whether a small thing, such as one actor, shows it strongly anywhere).

    The weights are buffers, not parameters: there is nothing to train, and `state_dict()` still
    holds them.
    """

    def __init__(self, widths: tuple[int, ...] = DEFAULT_WIDTHS, seed: int = DEFAULT_SEED):
        super().__init__()
        if len(widths) < 1 or widths[-1] < 2:
            raise ValueError(f"snippet encoder widths must be non-empty and end with >= 2, got {widths}")
        gen = torch.Generator().manual_seed(seed)  # private: the global RNG is neither read nor moved
        channels = (INPUT_CHANNELS, *widths)
        for k, (c_in, c_out) in enumerate(zip(channels[:-1], channels[1:])):
            # He initialisation keeps the activations' scale through the ReLUs
            weight = torch.randn(c_out, c_in, 3, 3, 3, generator=gen) * (2.0 / (27 * c_in)) ** 0.5
            self.register_buffer(f"weight{k}", weight)  # [C_out, C_in, 3, 3, 3]
        self.stages = len(widths)
        self.dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Snippets float [B, 3, T, H, W] in [0, 1] -> features float32 [B, D]."""
        if x.ndim != 5 or x.shape[1] != 3:
            raise ValueError(f"snippet encoder expects [B, 3, T, H, W], got {list(x.shape)}")
        c = colour_opponent(x.float())  # [B, 3, T, H, W]
        motion = torch.diff(c, dim=2, prepend=c[:, :, :1])  # [B, 3, T, H, W]
        vx, vy = local_velocity(c, motion)  # [B, 1, T, H, W] each
        flow = torch.cat([vx, vy], dim=1)  # [B, 2, T, H, W]
        h = torch.cat([c, MOTION_GAIN * motion, MOTION_GAIN * motion.abs(),
                       MOTION_GAIN * flow, MOTION_GAIN * flow.abs()], dim=1)  # [B, 13, T, H, W]
        for k in range(self.stages):
            h = F.relu(F.conv3d(h, getattr(self, f"weight{k}"), stride=2, padding=1))
        half = self.dim // 2
        return torch.cat([h[:, :half].mean(dim=(2, 3, 4)), h[:, half:].amax(dim=(2, 3, 4))], dim=1)  # [B, D]


def load_encoder(cfg: FeatureConfig) -> nn.Module:
    """The frozen encoder that `cfg.encoder` names, on the CPU, in eval mode.

    "default" is the seeded `SnippetEncoder`, or, when `cfg.encoder_weights` is set, that architecture
    with the state_dict in that file (loaded strictly; e.g. an encoder you fine-tuned); "torchscript"
    loads `cfg.encoder_weights`, which must map float [B, 3, snippet_frames, height, width] in [0, 1]
    to [B, D]. Either is run once on a
    blank batch of two snippets here, so that a wrong file fails now rather than inside a Ray actor.

    Raises:
        FileNotFoundError: the TorchScript file does not exist.
        ValueError: the file is not a TorchScript module, or its output is not [B, D].
    """
    if cfg.encoder == "default":
        net = SnippetEncoder()
        if cfg.encoder_weights:
            _load_state_dict(net, Path(cfg.encoder_weights))
    else:
        net = _load_torchscript(Path(cfg.encoder_weights))
    net.eval()
    encoder_dim(net, cfg)
    return net


def _load_state_dict(net: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"features.encoder_weights: {path} not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state_dict of the default snippet encoder, got "
                         f"{type(state).__name__}")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{path}: not a state_dict of the default snippet encoder: {e}") from None


def _load_torchscript(path: Path) -> nn.Module:
    if not path.is_file():
        raise FileNotFoundError(f"features.encoder_weights: {path} not found (a TorchScript file is needed "
                                "for features.encoder: torchscript)")
    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # torch raises RuntimeError with a long C++ trace
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"features.encoder_weights: {path} is not a TorchScript module "
                         f"(save it with torch.jit.script(model).save(path)): {first}") from e


def encoder_dim(encoder: nn.Module, cfg: FeatureConfig) -> int:
    """D of an encoder: run it on two blank snippets of the configured size and check the output.

    Raises:
        ValueError: the encoder fails, or its output is not a tensor of shape [2, D] (names the file).
    """
    x = torch.zeros(2, 3, cfg.snippet_frames, cfg.height, cfg.width)  # [B, 3, T, H, W]
    name = cfg.encoder_weights if cfg.encoder == "torchscript" else "the default encoder"
    try:
        with torch.no_grad():
            y = encoder(x)
    except Exception as e:
        raise ValueError(f"{name} failed on a batch of shape {list(x.shape)} [B, 3, T, H, W]: {e}") from e
    if not isinstance(y, torch.Tensor) or y.ndim != 2 or y.shape[0] != 2 or y.shape[1] < 1:
        shape = list(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{name} must return features [B, D] for input [B, 3, T, H, W]; for "
                         f"{list(x.shape)} it returned {shape}")
    return int(y.shape[1])
