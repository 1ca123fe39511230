"""AL-STAL's temporal action localizer (AL-STAL §3.2): an AFSD-style anchor-free 1D detector.

    snippet features [B, D, T] --encode--> a temporal feature pyramid, level l of stride 2**l snippets
                                           (deterministic in eval)
    pyramid --decode--> dropout on every level's features
                        -> coarse head at every location: class logits (C+1, background = 0) and
                           distances to the start and the end of the action (paper Eq.1)
                        -> refinement: max-pooled features around the coarse start and end (AFSD's
                           boundary pooling, simplified) -> refined class logits, boundary offsets
                           (paper Eq.3) and a quality score

All randomness of a forward pass sits in `decode` (dropout is its first layer), so MC-dropout
(raylab/models/mc.py: `enable_mc_dropout`) may run `encode` once and `decode` T times. GroupNorm, not
BatchNorm: the paper trains with one video per batch, and eval and train mode then differ only in dropout.

Time axis: positions are in snippets of the input; snippet i spans [i, i + 1). Location t of level l
covers snippets [t s, (t + 1) s), s = 2**l, and sits at its centre (t + 0.5) s (downsampling is a
kernel-4 stride-2 convolution, whose receptive field is centred there). Segments are (start, end) in
these units, clipped to [0, T]; callers turn them into seconds with the snippet stride and fps.

Any T >= 1 works: the input is zero-padded on the right to a multiple of the total stride 2**(levels-1)
and every level is cropped back to its ceil(T / s) locations. The padding reaches the last locations
through their receptive fields and GroupNorm's statistics; windows of a fixed T (a multiple of
2**(levels-1)) avoid both.

Classification is a softmax over C + 1 classes (index 0 = background), trained with the softmax focal
loss as in the paper; `class_probs` is the distribution over the C action classes alone (background
left out and renormalised) that TPE and TCI score (Eq.4-7).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from raylab.config import LocalizerConfig

MIN_REFINE_LENGTH = 1.0  # snippets: refinement offsets are in units of half the coarse length, at least this


# ---------------------------------------------------------------- geometry (pure torch)


def location_grid(length: int, levels: int, device=None) -> dict[str, torch.Tensor]:
    """Positions of every pyramid location for an input of `length` snippets, levels concatenated.

    Returns:
        centers float [N] (snippets), strides float [N], level int64 [N]; N = sum_l ceil(length / 2**l).
    """
    centers, strides, level = [], [], []
    for lvl in range(levels):
        s = 2**lvl
        n = math.ceil(length / s)
        centers.append((torch.arange(n, device=device, dtype=torch.float32) + 0.5) * s)
        strides.append(torch.full((n,), float(s), device=device))
        level.append(torch.full((n,), lvl, device=device, dtype=torch.int64))
    return {"centers": torch.cat(centers), "strides": torch.cat(strides), "level": torch.cat(level)}


def size_ranges(levels: int, size_base: float) -> list[tuple[float, float]]:
    """[lo, hi) segment lengths (snippets) assigned to each level: 0 and inf at the two ends."""
    ranges = []
    for lvl in range(levels):
        lo = 0.0 if lvl == 0 else size_base * 2 ** (lvl - 1)
        hi = math.inf if lvl == levels - 1 else size_base * 2**lvl
        ranges.append((lo, hi))
    return ranges


def segment_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """tIoU of segments a [..., 2] and b [..., 2] (start, end), broadcast; 0 where the union is empty."""
    inter = (torch.minimum(a[..., 1], b[..., 1]) - torch.maximum(a[..., 0], b[..., 0])).clamp_min(0)
    union = (a[..., 1] - a[..., 0]).clamp_min(0) + (b[..., 1] - b[..., 0]).clamp_min(0) - inter
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(union))


def _half_length(coarse: torch.Tensor) -> torch.Tensor:
    return 0.5 * (coarse[..., 1] - coarse[..., 0]).clamp_min(MIN_REFINE_LENGTH)


def refine_segments(coarse: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Paper Eq.3: start + w/2 Δs, end + w/2 Δe, w = coarse length (at least MIN_REFINE_LENGTH).

    Args: coarse float [..., 2] absolute segments; offsets float [..., 2] (Δs, Δe). Returns [..., 2].
    """
    return coarse + _half_length(coarse).unsqueeze(-1) * offsets


def refine_offset_targets(coarse: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The offsets that `refine_segments` turns `coarse` [..., 2] into `target` [..., 2] with."""
    return (target - coarse) / _half_length(coarse).unsqueeze(-1)


def per_level(x: torch.Tensor, level: torch.Tensor, dim: int = 1) -> list[torch.Tensor]:
    """Split a tensor over the N locations (axis `dim`) into one tensor per pyramid level, e.g.
    `class_probs` [B, N, C] -> [[B, T_0, C], [B, T_1, C], ...] for TCI, whose windows stay in a level."""
    return list(torch.split(x, torch.bincount(level).tolist(), dim=dim))


# ---------------------------------------------------------------- the model


def _conv_gn(cin: int, cout: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False),
                         nn.GroupNorm(math.gcd(16, cout), cout), nn.ReLU(inplace=True))


class Localizer(nn.Module):
    """The AL-STAL localizer (module doc). `forward(x)` = `decode(encode(x))`.

    Heads are shared over the pyramid levels (as in AFSD); distances are scaled by the level's stride so
    that each level predicts numbers of the same size.
    """

    def __init__(self, cfg: LocalizerConfig, num_classes: int):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if cfg.feature_dim < 1:
            raise ValueError("localizer.feature_dim must be set to the features' D before building the model")
        self.cfg, self.num_classes = cfg, num_classes
        w = cfg.width
        self.embed = nn.Sequential(_conv_gn(cfg.feature_dim, w), _conv_gn(w, w))
        self.down = nn.ModuleList(_conv_gn(w, w, kernel=4, stride=2) for _ in range(cfg.levels - 1))
        self.dropout = nn.Dropout(cfg.dropout)
        self.cls_tower, self.reg_tower = _conv_gn(w, w), _conv_gn(w, w)
        self.cls_head = nn.Conv1d(w, num_classes + 1, 3, padding=1)
        self.dist_head = nn.Conv1d(w, 2, 3, padding=1)
        self.boundary = _conv_gn(w, 2 * w, kernel=1)  # start (first w channels) and end features, level 0
        self.refine = nn.Sequential(nn.Conv1d(3 * w, w, 1), nn.ReLU(inplace=True))
        self.refine_cls = nn.Conv1d(w, num_classes + 1, 1)
        self.refine_off = nn.Conv1d(w, 2, 1)
        self.quality = nn.Conv1d(w, 1, 1)
        # start confident in background (focal-loss prior, 1% on the actions): early training is not
        # swamped by the loss of the many background locations
        prior = math.log(num_classes * 99.0)
        for head in (self.cls_head, self.refine_cls):
            nn.init.zeros_(head.bias)
            nn.init.constant_(head.bias[:1], prior)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Snippet features float [B, D, T] -> the pyramid, one map per level [B, width, ceil(T / 2**l)]."""
        if x.dim() != 3 or x.shape[1] != self.cfg.feature_dim or x.shape[2] < 1:
            raise ValueError(f"localizer input must be snippet features [B, D={self.cfg.feature_dim}, "
                             f"T >= 1], got shape {tuple(x.shape)}: check localizer.feature_dim against "
                             "the feature files")
        length, total = x.shape[2], self.cfg.strides[-1]
        x = F.pad(x, (0, -length % total))  # zeros on the right up to a multiple of the total stride
        feats = [self.embed(x)]
        for down in self.down:
            feats.append(down(feats[-1]))
        return [f[..., : math.ceil(length / s)] for f, s in zip(feats, self.cfg.strides)]

    def decode(self, feats: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Coarse and refined predictions at every location of every level (levels concatenated, N).

        Returns:
            coarse_logits [B, N, C+1], refine_logits [B, N, C+1] (index 0 = background);
            coarse_segments [B, N, 2] absolute (start, end) in snippets: centre -/+ the distances;
            distances [B, N, 2] (to start, to end) >= 0; refine_offsets [B, N, 2] (Δs, Δe of Eq.3);
            quality_logits [B, N]; class_probs [B, N, C] (p̃ over the action classes, Eq.3, for TPE/TCI);
            centers, strides [N] and level [N] (int64): the location grid; length: int64 scalar T.
        """
        length = feats[0].shape[-1]
        grid = location_grid(length, self.cfg.levels, feats[0].device)
        feats = [self.dropout(f) for f in feats]  # the only stochastic layers of the localizer
        logits, dists = [], []
        for f, s in zip(feats, self.cfg.strides):
            logits.append(self.cls_head(self.cls_tower(f)))  # [B, C+1, T_l]
            dists.append(F.softplus(self.dist_head(self.reg_tower(f))) * s)  # [B, 2, T_l]: >= 0, smooth
        coarse_logits = torch.cat(logits, -1).transpose(1, 2)  # [B, N, C+1]
        dist = torch.cat(dists, -1).transpose(1, 2)  # [B, N, 2]
        centers = grid["centers"]
        coarse = torch.stack([centers - dist[..., 0], centers + dist[..., 1]], -1)  # [B, N, 2]
        # AFSD's boundary pooling: the coarse boundaries (no gradient through them) pick where to look
        pooled = self._boundary_pool(self.boundary(feats[0]), coarse.detach())  # [B, 2W, N]
        h = self.refine(torch.cat([torch.cat(feats, -1), pooled], 1))  # [B, W, N]
        refine_logits = self.refine_cls(h).transpose(1, 2)  # [B, N, C+1]
        class_probs = 0.5 * (coarse_logits[..., 1:].softmax(-1) + refine_logits[..., 1:].softmax(-1))
        return {
            "coarse_logits": coarse_logits, "refine_logits": refine_logits, "coarse_segments": coarse,
            "distances": dist, "refine_offsets": self.refine_off(h).transpose(1, 2),
            "quality_logits": self.quality(h).squeeze(1), "class_probs": class_probs,
            **grid, "length": torch.tensor(length, device=centers.device),
        }

    def _boundary_pool(self, bmap: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Max of `boundary_samples` linearly interpolated level-0 features evenly spread over
        [b - r, b + r] around each coarse boundary b, r = max(0.5, boundary_ratio × coarse length).

        Args: bmap float [B, 2W, T0] (start features, then end features); coarse float [B, N, 2].
        Returns: float [B, 2W, N] (pooled start features, then pooled end features).
        """
        b, c2, t0 = bmap.shape
        n, k = coarse.shape[1], self.cfg.boundary_samples
        radius = (self.cfg.boundary_ratio * (coarse[..., 1] - coarse[..., 0])).clamp_min(0.5)  # [B, N]
        spread = torch.linspace(-1.0, 1.0, k, device=bmap.device) if k > 1 else bmap.new_zeros(1)
        out = []
        for side, fmap in enumerate(bmap.split(c2 // 2, dim=1)):
            pts = coarse[..., side, None] + radius[..., None] * spread  # [B, N, K] snippets
            x = (pts - 0.5).clamp(0, t0 - 1).flatten(1)  # index coordinates: snippet i is centred at i+0.5
            i0 = x.floor().long()
            i1 = (i0 + 1).clamp_max(t0 - 1)
            frac = (x - i0).unsqueeze(1)  # [B, 1, N*K]
            g0 = fmap.gather(2, i0.unsqueeze(1).expand(-1, fmap.shape[1], -1))  # [B, W, N*K]
            g1 = fmap.gather(2, i1.unsqueeze(1).expand(-1, fmap.shape[1], -1))
            out.append((g0 + frac * (g1 - g0)).view(b, -1, n, k).amax(-1))  # [B, W, N]
        return torch.cat(out, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Full pass on snippet features float [B, D, T]; see `decode` for the outputs."""
        return self.decode(self.encode(x))


# ---------------------------------------------------------------- training targets


def localizer_targets(segments, labels, length: int, levels: int, size_base: float
                      ) -> dict[str, torch.Tensor]:
    """Assign ground-truth segments to the pyramid's locations (one window of `length` snippets per video).

    A location is positive for a segment when its centre lies in the segment (ends included) and the
    segment's length is in the level's range (`size_ranges`); when several qualify, the shortest wins.
    Segments are clipped to [0, length] first; one shorter than a level-0 location may own none.

    Args:
        segments: per video, float [M, 2] (start, end) in snippets (tensor, array or list; M may be 0).
        labels: per video, int [M] action classes in 0..C-1.
        length: T of the window; levels, size_base: as in LocalizerConfig.

    Returns:
        cls int64 [B, N] (0 = background, c + 1 = action c); segments float [B, N, 2] (the assigned
        segment, zeros on background).
    """
    grid = location_grid(length, levels)
    ranges = torch.tensor(size_ranges(levels, size_base))[grid["level"]]  # [N, 2] = [lo, hi)
    assigned = [_assign(seg, lab, grid["centers"], ranges, length) for seg, lab in zip(segments, labels)]
    return {"cls": torch.stack([a[0] for a in assigned]), "segments": torch.stack([a[1] for a in assigned])}


def _assign(seg, lab, centers: torch.Tensor, ranges: torch.Tensor, length: int):
    """One video's `localizer_targets`: cls int64 [N], segments float [N, 2]."""
    seg = torch.as_tensor(seg, dtype=torch.float32).reshape(-1, 2).clamp(0, length)  # [M, 2]
    lab = torch.as_tensor(lab, dtype=torch.int64).reshape(-1)
    if len(seg) != len(lab):
        raise ValueError(f"{len(seg)} segments but {len(lab)} labels")
    if not len(seg):
        return centers.new_zeros(len(centers), dtype=torch.int64), centers.new_zeros(len(centers), 2)
    size = seg[:, 1] - seg[:, 0]  # [M]
    ok = ((seg[:, 0] <= centers[:, None]) & (centers[:, None] <= seg[:, 1]) & (size > 0)
          & (ranges[:, :1] <= size) & (size < ranges[:, 1:]))  # [N, M]
    cost, best = torch.where(ok, size, math.inf).min(1)  # shortest qualifying segment; ties: the first
    pos = torch.isfinite(cost)
    return torch.where(pos, lab[best] + 1, 0), torch.where(pos[:, None], seg[best], 0.0)


# ---------------------------------------------------------------- inference


def soft_nms(segments: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, sigma: float = 0.5,
             score_threshold: float = 1e-3, top_k: int = 100) -> dict[str, torch.Tensor]:
    """Gaussian Soft-NMS (Bodla et al. 2017) on 1D segments, each class on its own.

    Repeatedly keep the highest-scoring remaining segment and multiply the score of every remaining
    segment of the same class by exp(-tIoU² / sigma); segments whose score falls to `score_threshold`
    or below are dropped. Each step is one vectorised pass over the K candidates.

    Args: segments float [K, 2]; scores float [K]; labels int [K]; top_k: most segments returned.

    Returns: segments [K', 2], scores [K'] (decayed), labels [K'], in the order kept (descending score).
    """
    scores = scores.clone().float()
    alive = scores > score_threshold
    keep, kept_scores = [], []
    while len(keep) < top_k and bool(alive.any()):
        i = int(torch.where(alive, scores, -math.inf).argmax())
        keep.append(i)
        kept_scores.append(scores[i])
        alive[i] = False
        same = labels == labels[i]
        iou = segment_iou(segments[i], segments)  # [K]
        scores = torch.where(same, scores * torch.exp(-iou.square() / sigma), scores)
        alive &= scores > score_threshold
    idx = torch.tensor(keep, dtype=torch.long, device=segments.device)
    return {"segments": segments[idx], "labels": labels[idx],
            "scores": torch.stack(kept_scores) if keep else scores.new_zeros(0)}


@torch.no_grad()
def decode(outputs: dict, score_threshold: float = 1e-3, pre_nms_top_k: int = 1000, sigma: float = 0.5,
           top_k: int = 100) -> list[dict[str, torch.Tensor]]:
    """Detections of each video of the batch from the localizer's outputs.

    Segment = the refined boundaries (Eq.3) clipped to [0, T]; score of class c = p̃_c × sigmoid(quality),
    p̃ = (softmax(coarse) + softmax(refined)) / 2 over the C + 1 classes (Eq.3; background mass kept,
    so a background location scores low on every action). Every (location, class) pair above
    `score_threshold`, at most `pre_nms_top_k` of them, goes through `soft_nms`.

    Returns:
        per video a dict: segments float [K, 2] (snippets), labels int64 [K] (0..C-1), scores float [K],
        sorted by descending score.
    """
    length = float(outputs["length"])
    segments = refine_segments(outputs["coarse_segments"], outputs["refine_offsets"]).clamp(0, length)
    probs = 0.5 * (outputs["coarse_logits"].softmax(-1) + outputs["refine_logits"].softmax(-1))[..., 1:]
    scores = probs * torch.sigmoid(outputs["quality_logits"]).unsqueeze(-1)  # [B, N, C]
    num_classes = scores.shape[-1]
    results = []
    for seg, sc in zip(segments, scores):
        flat = sc.flatten()  # [N*C], location-major
        flat = torch.where((seg[:, 1] > seg[:, 0]).repeat_interleave(num_classes), flat, 0.0)
        top = flat.topk(min(pre_nms_top_k, flat.numel()))
        ok = top.values > score_threshold
        idx, val = top.indices[ok], top.values[ok]
        labels = idx % num_classes
        results.append(soft_nms(seg[idx // num_classes], val, labels, sigma, score_threshold, top_k))
    return results
