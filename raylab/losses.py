"""Losses and loss weights, as pure functions.

ASL's Max-Gaussian Weighted (MGW) loss (Eq.4) weights each frame of a training clip by its Gaussian
proximity to the nearest annotated frame of the same video; `masking` (σ → 0) and `interpolation`
(σ → ∞) are the two limits the paper compares against.

The weights live in raylab/proximity.py (numpy, shared with APU's Eq.2; re-exported here) and are
computed in data decoding; the torch losses consume them in training:
`detector_loss` = margin (or spread) loss for classification + `weighted_bce` for localization.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from raylab.proximity import LOSS_WEIGHTINGS, mgw_weights, nearest_annotated_distance  # noqa: F401


def _valid_labels(labels: torch.Tensor) -> torch.Tensor:
    """Label -1 (several / unknown action) carries no classification loss."""
    return labels >= 0


def margin_loss(
    lengths: torch.Tensor, labels: torch.Tensor, m_plus: float = 0.9, m_minus: float = 0.1, lam: float = 0.5
) -> torch.Tensor:
    """Capsule margin loss (Sabour et al. 2017), summed over classes, mean over clips with a label.

    L = sum_c T_c max(0, m+ - a_c)^2 + lam (1 - T_c) max(0, a_c - m-)^2, T_c = [c is the label].

    Args:
        lengths: float [B, C] class activations in [0, 1] (capsule lengths).
        labels: int [B] class indices; -1 rows are left out (a batch without labels gives 0).

    Returns:
        scalar.
    """
    valid = _valid_labels(labels)
    target = F.one_hot(labels.clamp_min(0).long(), lengths.shape[-1]).to(lengths.dtype)
    per_class = target * F.relu(m_plus - lengths) ** 2 + lam * (1 - target) * F.relu(lengths - m_minus) ** 2
    per_clip = per_class.sum(-1) * valid
    return per_clip.sum() / valid.sum().clamp_min(1)


def spread_margin(step: int, total_steps: int, m_min: float = 0.2, m_max: float = 0.9) -> float:
    """Spread-loss margin growing linearly from m_min to m_max over training (Hinton et al. 2018, the
    EM-routing paper whose spread loss VideoCapsuleNet trains with; it raises the margin in steps)."""
    frac = min(max(step / max(total_steps, 1), 0.0), 1.0)
    return m_min + (m_max - m_min) * frac


def spread_loss(activations: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Spread loss L = sum_{c != t} max(0, margin - (a_t - a_c))^2, mean over clips with a label.

    A small margin early (see `spread_margin`) keeps wrong classes from being pushed down too hard
    before the capsules are trained.

    Args:
        activations: float [B, C] class activations; labels: int [B] (-1 rows left out).
    """
    valid = _valid_labels(labels)
    idx = labels.clamp_min(0).long()
    a_t = activations.gather(1, idx[:, None])  # [B, 1]
    others = 1 - F.one_hot(idx, activations.shape[-1]).to(activations.dtype)
    per_clip = (F.relu(margin - (a_t - activations)) ** 2 * others).sum(-1) * valid
    return per_clip.sum() / valid.sum().clamp_min(1)


def weighted_bce(
    fg_logits: torch.Tensor, fg_target: torch.Tensor, frame_weight: torch.Tensor
) -> torch.Tensor:
    """Per-pixel BCE weighted per frame (the MGW loss, ASL Eq.4), as a weighted mean over the batch.

    loss = sum_{b,t} w_bt * mean_pixels BCE(logit_bthw, target_bthw) / max(sum_{b,t} w_bt, 1)

    Eq. 4 sums w_i L_i over frames and leaves the normaliser open. Dividing by the weights' sum keeps the
    localisation term at the same scale relative to classification whatever share of the frames is
    labelled: at 10% labels the MGW weights (σ = 1.3) of a clip sum to about 3 of its 8 frames, and most
    clips of `clips.video_clips` carry almost none, so a fixed B * T normaliser gave localisation a
    quarter of the weight it has at 100% labels and left the detector under-trained at localising
    (docs/RESULTS.md). A frame of weight 0 still adds exactly 0 to the loss and to every gradient; a
    batch whose weights sum to less than one frame is divided by 1, so a few far, faint pseudo-labels do
    not make a full step. With masking weights the loss is the mean BCE of the annotated frames; with
    interpolation weights (all 1), the plain mean BCE over all frames.

    Args:
        fg_logits: float [B, T, H, W]; fg_target: {0, 1} (or soft) [B, T, H, W];
        frame_weight: float [B, T] (`mgw_weights`).

    Returns:
        scalar.
    """
    bce = F.binary_cross_entropy_with_logits(fg_logits, fg_target.to(fg_logits.dtype), reduction="none")
    per_frame = bce.flatten(2).mean(-1)  # [B, T]
    weight = frame_weight.to(per_frame.dtype)
    return (per_frame * weight).sum() / weight.sum().clamp_min(1.0)


def detector_loss(
    outputs: dict, batch: dict, cls_weight: float = 1.0, loc_weight: float = 1.0, **margin_kw
) -> dict[str, torch.Tensor]:
    """The ASL training loss: classification + MGW-weighted localization.

    Args:
        outputs: the detector's outputs; `class_lengths` (capsule head) takes the margin loss,
            `class_logits` (linear head) the cross-entropy; `fg_logits` [B, T, H, W].
        batch: tensors `label` int [B] (-1: no classification loss), `fg` [B, T, H, W] labels and
            pseudo-labels, `weight` float [B, T] per-frame weights (raylab/models/detector.batch_tensors).
        margin_kw: m_plus, m_minus, lam of `margin_loss`.

    Returns:
        total, classification, localization: scalars.
    """
    labels = batch["label"].long()
    if "class_lengths" in outputs:
        cls = margin_loss(outputs["class_lengths"], labels, **margin_kw)
    else:
        ce = F.cross_entropy(outputs["class_logits"], labels.clamp_min(0), reduction="none")
        valid = _valid_labels(labels)
        cls = (ce * valid).sum() / valid.sum().clamp_min(1)
    loc = weighted_bce(outputs["fg_logits"], batch["fg"], batch["weight"])
    return {"total": cls_weight * cls + loc_weight * loc, "classification": cls, "localization": loc}


# ---------------------------------------------------------------- AL-STAL localizer (paper Eq.2)
#
# Loss = l_cls^coarse + λ l_loc^coarse + l_cls^refine + l_loc^refine + γ l_q, each term summed over the
# locations of the batch and divided by the number of positive locations (at least 1), as in FCOS / AFSD.
# Targets come from `raylab.models.localizer.localizer_targets`; location geometry (tIoU, the offsets of
# Eq.3) lives in that module too and is imported where used.


def softmax_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, alpha: float | None = None
) -> torch.Tensor:
    """Softmax focal loss (Lin et al. 2017), per location: -w_y (1 - p_y)^gamma log p_y, p = softmax.

    Args:
        logits: float [..., K] (K = C + 1, class 0 = background).
        targets: int [...] in 0..K-1; negative = ignored (loss 0).
        gamma: focusing exponent (0 = cross-entropy).
        alpha: None = w_y = 1; else w_y = alpha for an action target (y >= 1), 1 - alpha for background
            (RetinaNet's 0.25 weights the actions down, its gamma = 2 having taken most of the easy
            background out already).

    Returns:
        float [...]: the loss of each location.
    """
    valid = targets >= 0
    y = targets.clamp_min(0).long().unsqueeze(-1)
    log_p = logits.log_softmax(-1).gather(-1, y).squeeze(-1)  # log p_y
    loss = -(1 - log_p.exp()).pow(gamma) * log_p
    if alpha is not None:
        loss = loss * torch.where(targets >= 1, alpha, 1 - alpha)
    return torch.where(valid, loss, torch.zeros_like(loss))


def tiou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - tIoU of absolute segments pred [..., 2] and target [..., 2] (start, end), per segment.

    Absolute segments, not distances: the tIoU of (c - d_s, c + d_e) with (c - g_s, c + g_e) does not
    depend on the centre c, so the two forms give the same loss. A coarse prediction at a positive
    location always overlaps its target (both contain the location), so the gradient never vanishes.
    """
    from raylab.models.localizer import segment_iou

    return 1 - segment_iou(pred, target)


def boundary_l1_loss(pred_offsets: torch.Tensor, target_offsets: torch.Tensor) -> torch.Tensor:
    """L1 between the refinement's offsets (Δs, Δe) [..., 2] and their targets
    (`localizer.refine_offset_targets`), summed over the two boundaries: float [...]."""
    return (pred_offsets - target_offsets).abs().sum(-1)


def quality_loss(quality_logits: torch.Tensor, target_iou: torch.Tensor) -> torch.Tensor:
    """BCE of the quality score against a soft target in [0, 1], per location: float [...].

    The target (localizer_loss) is the tIoU of the location's coarse segment with its ground truth
    (no gradient through it): at inference the score multiplies the class probability, so locations
    whose proposals fit their action well rank first. Computed on positive locations only.
    """
    return F.binary_cross_entropy_with_logits(quality_logits, target_iou.to(quality_logits.dtype),
                                              reduction="none")


def localizer_loss(
    outputs: dict, targets: dict, loc_weight: float = 1.0, quality_weight: float = 1.0,
    gamma: float = 2.0, alpha: float | None = None,
) -> dict[str, torch.Tensor]:
    """The AL-STAL localizer's training loss (paper Eq.2).

    Both classifiers (coarse, refined) are trained on the location's assigned class with the softmax
    focal loss; the coarse segment by tIoU; the refinement by L1 on the offsets that would turn the
    coarse segment (detached) into the ground truth; the quality by BCE against the coarse tIoU.

    Args:
        outputs: the localizer's outputs (coarse_logits, refine_logits [B, N, C+1], coarse_segments,
            refine_offsets [B, N, 2], quality_logits [B, N]).
        targets: `localizer_targets`: cls int [B, N] (0 background, c+1 action, -1 ignored),
            segments float [B, N, 2].
        loc_weight: λ of Eq.2 (the paper: 10 on THUMOS'14, 1 on ActivityNet); quality_weight: γ (1).
        gamma, alpha: of `softmax_focal_loss`.

    Returns:
        total, coarse_cls, coarse_loc, refine_cls, refine_loc, quality: scalars.
    """
    from raylab.models.localizer import refine_offset_targets, segment_iou

    cls = targets["cls"].long()
    pos = cls > 0  # [B, N]
    norm = pos.sum().clamp_min(1)
    coarse = outputs["coarse_segments"][pos]  # [P, 2]
    gt = targets["segments"][pos].to(coarse.dtype)  # [P, 2]
    offsets = refine_offset_targets(coarse.detach(), gt)  # [P, 2]
    fit = segment_iou(coarse.detach(), gt)  # [P]: the quality target
    terms = {
        "coarse_cls": softmax_focal_loss(outputs["coarse_logits"], cls, gamma, alpha).sum() / norm,
        "coarse_loc": tiou_loss(coarse, gt).sum() / norm,
        "refine_cls": softmax_focal_loss(outputs["refine_logits"], cls, gamma, alpha).sum() / norm,
        "refine_loc": boundary_l1_loss(outputs["refine_offsets"][pos], offsets).sum() / norm,
        "quality": quality_loss(outputs["quality_logits"][pos], fit).sum() / norm,
    }
    terms["total"] = (terms["coarse_cls"] + loc_weight * terms["coarse_loc"] + terms["refine_cls"]
                      + terms["refine_loc"] + quality_weight * terms["quality"])
    return terms
