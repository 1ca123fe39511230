"""ASL's action detector: a simplified VideoCapsuleNet (ASL §3.3) sized for the hardware it runs on.

    clip [B, 3, T, H, W] (+ its frame differences with detector.frame_diff: 6 channels)
         --encode--> the deepest stage's features + a lateral projection of each
                     shallower stage (deterministic in eval)
    features --decode--> dropout on the deepest features
                         -> classification head (capsules with 2D routing, or linear)
                         -> class-conditioned top-down path (reduce, upsample, add the lateral)
                         -> per-pixel foreground logits per frame, upsampled to the clip's size

All randomness of a forward pass sits in `decode` (dropout is its first layer), so MC-dropout may run
`encode` once and `decode` T times (raylab/models/mc.py) and get exactly what T full passes give. The
decoder is light (pointwise convolutions, nearest upsampling, additions) and the encoder carries the
capacity (the small preset's shallow stages are wide), so the shared encoder saves most of the cost of
T passes: 4x for T = 10 on the small preset, 8 clips of 8x64x64 on one CPU thread (benchmarks/score.py).

Class conditioning (VideoCapsuleNet's capsule masking): the localization decoder sees the class capsule
poses of one class only — the ground-truth class during training, the predicted class (argmax) at
inference or when the label is unknown (-1). The linear head conditions on a learned class embedding.

Input size: T must be divisible by the product of `temporal_strides`, H and W by 2 ** len(widths)
(each encoder stage halves the spatial size); the small preset takes T % 2 == 0, H % 8 == W % 8 == 0.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raylab.config import DetectorConfig  # noqa: F401  (re-exported: the detector's config)

# ImageNet RGB statistics (the convention of the I3D / Kinetics backbones whose weights users may load)
CLIP_MEAN = (0.485, 0.456, 0.406)
CLIP_STD = (0.229, 0.224, 0.225)

def clips_to_tensor(clip, device=None) -> torch.Tensor:
    """uint8 clips [B, T, H, W, 3] (numpy or torch) -> float [B, 3, T, H, W] scaled to [0, 1] and
    normalised per channel with CLIP_MEAN / CLIP_STD."""
    x = torch.as_tensor(np.asarray(clip) if not torch.is_tensor(clip) else clip, device=device)
    x = x.permute(0, 4, 1, 2, 3).float().div_(255.0)  # [B, 3, T, H, W]
    mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1, 1)
    std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1, 1)
    return (x - mean) / std


def batch_tensors(batch: dict, device=None) -> dict[str, torch.Tensor]:
    """The model's inputs and targets from a decoded batch (raylab/data/stream.py).

    Returns:
        clip float [B, 3, T, H, W]; label int64 [B] (-1 unknown); fg float [B, T, H, W];
        weight float [B, T].
    """
    return {
        "clip": clips_to_tensor(batch["clip"], device),
        "label": torch.as_tensor(np.asarray(batch["label"], dtype=np.int64), device=device),
        "fg": torch.as_tensor(np.asarray(batch["fg"]), device=device).float(),
        "weight": torch.as_tensor(np.asarray(batch["weight"], dtype=np.float32), device=device),
    }


def frame_differences(x: torch.Tensor) -> torch.Tensor:
    """Clips [B, C, T, H, W] -> each frame minus the one before it (RGB difference, TSN), the first
    frame's difference 0: what moved, with the static scene cancelled."""
    return x - torch.cat([x[:, :, :1], x[:, :, :-1]], 2)


def random_flip(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mirror half of the clips of a batch (`batch_tensors`) left-right, frames and foreground targets
    together, drawing from torch's RNG: the action and its boxes are the same seen in a mirror."""
    flip = torch.rand(len(tensors["label"]), device=tensors["clip"].device) < 0.5
    out = dict(tensors)
    out["clip"] = torch.where(flip[:, None, None, None, None], tensors["clip"].flip(-1), tensors["clip"])
    out["fg"] = torch.where(flip[:, None, None, None], tensors["fg"].flip(-1), tensors["fg"])
    return out


def random_crop(tensors: dict[str, torch.Tensor], min_scale: float) -> dict[str, torch.Tensor]:
    """Scale jitter: every clip of a batch (`batch_tensors`) cropped to a random window (height and width
    `s` × the clip's, s uniform in [min_scale, 1], placed uniformly) and resized back, frames
    (bilinear) and foreground targets (bilinear, so they turn soft at the edges) together, drawing from
    torch's RNG. The actor is seen at other sizes and positions, with its surroundings cut by the border
    as the frame border cuts them in other videos. `min_scale` 1 returns the batch unchanged."""
    if min_scale >= 1.0:
        return tensors
    clip, fg = tensors["clip"], tensors["fg"]
    h, w = clip.shape[-2:]
    scales = min_scale + (1.0 - min_scale) * torch.rand(len(clip))
    clips, fgs = [], []
    for b, s in enumerate(scales.tolist()):
        ch, cw = max(1, round(h * s)), max(1, round(w * s))
        y0 = int(torch.randint(h - ch + 1, ()))
        x0 = int(torch.randint(w - cw + 1, ()))
        # [3, T, ch, cw] and [1, T, ch, cw]: interpolate resizes the last two dimensions
        clips.append(F.interpolate(clip[b, ..., y0:y0 + ch, x0:x0 + cw], size=(h, w), mode="bilinear",
                                   align_corners=False))
        fgs.append(F.interpolate(fg[b, None, :, y0:y0 + ch, x0:x0 + cw], size=(h, w), mode="bilinear",
                                 align_corners=False)[0])
    return {**tensors, "clip": torch.stack(clips), "fg": torch.stack(fgs)}


CHALLENGED_SHARE = 1 / 3  # of a batch's labelled clips, classified with muted features (RSC's batch share)


def self_challenge(features: torch.Tensor, head: nn.Linear, labels: torch.Tensor,
                   share: float) -> torch.Tensor:
    """Class logits [B, C] of pooled features [B, D] under representation self-challenging (RSC, Huang
    et al. 2020, with gradient × activation as the importance): for CHALLENGED_SHARE of the clips with a
    label (>= 0), drawn from torch's RNG, the ceil(share · D) features adding most to the true class's
    logit (feature × its weight, the gradient of that logit times the activation) are set to 0 before
    the head. The dominant cue of a class is taken away from some clips at every step, so the others
    must carry the class too. Other clips get the plain logits."""
    muted = max(1, math.ceil(share * features.shape[1]))
    contribution = features.detach() * head.weight.detach()[labels.clamp_min(0)]  # [B, D]
    top = contribution.topk(muted, dim=1).indices
    keep = torch.ones_like(features).scatter_(1, top, 0.0)
    challenged = (labels >= 0) & (torch.rand(len(labels), device=features.device) < CHALLENGED_SHARE)
    return head(torch.where(challenged[:, None], features * keep, features))


def _conv_bn(cin: int, cout: int, stride=1, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
                         nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    """relu(x + bn(conv3x3x3(x))): the extra convolutions of an encoder stage, trainable at depth."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm3d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn(self.conv(x)))


def squash(s: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """Capsule non-linearity v = |s|^2 / (1 + |s|^2) * s / |s|; eps keeps the gradient finite at s = 0."""
    n2 = s.pow(2).sum(dim, keepdim=True)
    return s * (n2 / (1.0 + n2)) / torch.sqrt(n2 + eps)


class CapsuleHead(nn.Module):
    """Primary capsules on the 2D grid of time-pooled encoder features, routed to one capsule per class.

    Dynamic routing (Sabour et al. 2017) over the 2D positions (ASL's "2D routing" in place of
    VideoCapsuleNet's 3D routing). The transform from a primary capsule type to each class capsule is
    shared over positions (convolutional capsules). Class activation = capsule length, in [0, 1).
    """

    def __init__(self, cin: int, num_classes: int, caps: int, pdim: int, cdim: int, iters: int):
        super().__init__()
        self.caps, self.pdim, self.iters = caps, pdim, iters
        self.primary = nn.Conv2d(cin, caps * pdim, 1)
        self.transform = nn.Parameter(torch.randn(caps, num_classes, cdim, pdim) * 0.05)

    def forward(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, _, h, w = feat.shape
        u = self.primary(feat.mean(2)).view(b, self.caps, self.pdim, h * w)  # [B, P, D, h*w]
        u = squash(u.permute(0, 3, 1, 2), dim=-1)  # primary capsules [B, N=h*w, P, D]
        u_hat = torch.einsum("pced,bnpd->bnpce", self.transform, u).flatten(1, 2)  # [B, N*P, C, E]
        logits = u_hat.new_zeros(u_hat.shape[:3])  # routing logits [B, N*P, C]
        for i in range(self.iters):
            coupling = logits.softmax(-1)
            v = squash((coupling.unsqueeze(-1) * u_hat).sum(1))  # class capsules [B, C, E]
            if i < self.iters - 1:
                logits = logits + (u_hat * v.unsqueeze(1)).sum(-1)
        return v.norm(dim=-1), v  # lengths [B, C], poses [B, C, E]


class Detector(nn.Module):
    """The ASL detector (module doc). `forward(x, labels)` = `decode(encode(x), labels)`."""

    def __init__(self, cfg: DetectorConfig, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.cfg, self.num_classes = cfg, num_classes
        widths, ts = cfg.widths, cfg.temporal_strides
        stages, cin = [], 6 if cfg.frame_diff else 3
        for w, t in zip(widths, ts):
            layers = [_conv_bn(cin, w, (t, 2, 2))] + [_Residual(w) for _ in range(cfg.depth - 1)]
            stages.append(nn.Sequential(*layers))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.dropout = nn.Dropout(cfg.dropout)
        if cfg.head == "capsules":
            self.head = CapsuleHead(widths[-1], num_classes, cfg.primary_caps, cfg.primary_dim,
                                    cfg.class_dim, cfg.routing_iters)
            self.condition = nn.Linear(num_classes * cfg.class_dim, cfg.cond_channels)
        else:
            self.head = nn.Linear(2 * widths[-1], num_classes)  # over mean- and max-pooled features
            self.condition = nn.Linear(num_classes, cfg.cond_channels)
        self.bottleneck = _conv_bn(widths[-1] + cfg.cond_channels, widths[-1], kernel=1)
        # Top-down path (FPN-style): the encoder also projects each shallower stage's features (a lateral,
        # deterministic, computed once); decoder stage i reduces the deeper map's channels at its low
        # resolution, upsamples it and adds lateral i. MC dropout runs the decoder T times, so it is kept
        # light next to the encoder, which runs once.
        self.lateral = nn.ModuleList(_conv_bn(widths[i], widths[i], kernel=1) for i in range(len(widths) - 1))
        self.reduce = nn.ModuleList(nn.Conv3d(widths[i + 1], widths[i], 1) for i in range(len(widths) - 1))
        self.to_fg = nn.Conv3d(widths[0], 1, 1)  # logits at stage 0's resolution, upsampled to the clip's
        if cfg.weights:
            load_weights(self, cfg.weights)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Clips float [B, 3, T, H, W] -> one feature map per stage, [B, widths[i], T_i, H_i, W_i]."""
        t_stride, s_stride = self.cfg.strides
        _, _, t, h, w = x.shape
        if t % t_stride or h % s_stride or w % s_stride:
            raise ValueError(f"clip size T×H×W = {t}×{h}×{w}: T must be a multiple of {t_stride} and "
                             f"H, W of {s_stride} for this detector (preset {self.cfg.preset!r})")
        if self.cfg.frame_diff:
            x = torch.cat([x, frame_differences(x)], 1)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return [lateral(f) for lateral, f in zip(self.lateral, feats)] + [feats[-1]]

    def decode(self, feats: list[torch.Tensor], condition: torch.Tensor | None = None) -> dict:
        """Dropout, classification and class-conditioned localization from the encoder's features.

        Args:
            feats: output of `encode`.
            condition: the class the localization decoder is conditioned on: int [B] labels (-1 = use
                the predicted class), or float [B, C] one-hot / probabilities; None = predicted class.

        Returns:
            class_lengths [B, C] capsule lengths (capsule head) or class_logits [B, C] (linear head);
            class_probs [B, C] (lengths normalised to sum 1, or softmax of the logits);
            fg_logits [B, T, H, W] per-pixel foreground logits of every frame.
        """
        deep = self.dropout(feats[-1])  # [B, W_last, T', H', W']: the only stochastic layer of the detector
        out: dict[str, torch.Tensor] = {}
        if self.cfg.head == "capsules":
            scores, poses = self.head(deep)
            out["class_lengths"] = scores
            out["class_probs"] = scores / scores.sum(-1, keepdim=True).clamp_min(1e-8)
        else:
            # the max finds a small cue (an object the action comes with) that the mean dilutes
            pooled = torch.cat([deep.mean((2, 3, 4)), deep.amax((2, 3, 4))], 1)
            if self.training and self.cfg.challenge and condition is not None and condition.dim() == 1:
                scores = self_challenge(pooled, self.head, condition.long(), self.cfg.challenge)
            else:
                scores = self.head(pooled)
            out["class_logits"] = scores
            out["class_probs"] = scores.softmax(-1)
        mask = self._class_mask(scores.detach(), condition)  # [B, C]
        code = (poses * mask.unsqueeze(-1)).flatten(1) if self.cfg.head == "capsules" else mask
        cond = self.condition(code)[:, :, None, None, None].expand(-1, -1, *deep.shape[2:])
        y = self.bottleneck(torch.cat([deep, cond], 1))
        for i in reversed(range(len(self.reduce))):
            y = F.interpolate(self.reduce[i](y), size=feats[i].shape[2:], mode="nearest")
            y = F.relu_(y.add_(feats[i]))
        t0, h0, w0 = feats[0].shape[2:]  # stage 0 halves H and W and divides T by its temporal stride
        clip_size = (t0 * self.cfg.temporal_strides[0], 2 * h0, 2 * w0)
        logits = F.interpolate(self.to_fg(y), size=clip_size, mode="trilinear", align_corners=False)
        out["fg_logits"] = logits.squeeze(1)  # [B, T, H, W]
        return out

    def _class_mask(self, scores: torch.Tensor, condition: torch.Tensor | None) -> torch.Tensor:
        predicted = F.one_hot(scores.argmax(-1), self.num_classes).to(scores.dtype)
        if condition is None:
            return predicted
        if condition.dim() == 2:
            return condition.to(scores.dtype)
        labels = condition.long()
        known = (labels >= 0).unsqueeze(-1)
        return torch.where(known, F.one_hot(labels.clamp_min(0), self.num_classes).to(scores.dtype),
                           predicted)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        """Full pass; `labels` int [B] condition the localization (training), None = predicted class."""
        return self.decode(self.encode(x), labels)


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load weights from a local file, strictly; errors name the file and the keys.

    The file holds a state_dict, or a raylab checkpoint (`train.save_detector`: the state_dict under
    "model"), as a warm start from the previous cycle does.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"detector weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "detector" in state:
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state_dict (a dict of tensors), got {type(state).__name__}")
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{path}: weights do not match this detector (check detector.preset / widths / head / "
            f"frame_diff and the number of classes): missing {missing[:5]} ({len(missing)}), "
            f"unexpected {unexpected[:5]} ({len(unexpected)}), shape mismatches {shapes[:5]} ({len(shapes)})")
    model.load_state_dict(state, strict=True)
