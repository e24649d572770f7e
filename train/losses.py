"""Training losses (config.LOSSES): BCE + Dice (1 output channel, sigmoid) or CE + Dice (2+ classes, softmax; Dice
on the foreground classes); PraNet's structure loss; and the distillation term."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image, averaged (eps smooths images whose mask is empty)."""
    dims = tuple(range(1, prob.ndim))
    inter = (prob * target).sum(dims)
    return (1 - (2 * inter + eps) / (prob.sum(dims) + target.sum(dims) + eps)).mean()


def structure_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PraNet's loss (Fan et al. 2020): BCE + IoU, each pixel weighted 1 + 5 x how far its 31x31 neighbourhood's
    mask mean is from its own label, so pixels near a border count up to 6x."""
    k = min(31, target.shape[-1] // 2 * 2 - 1)  # odd and no larger than the image (tiny test images)
    weight = 1 + 5 * torch.abs(F.avg_pool2d(target, k, stride=1, padding=k // 2, count_include_pad=False) - target)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    wbce = (weight * bce).sum((2, 3)) / weight.sum((2, 3))
    prob = torch.sigmoid(logits)
    inter = (prob * target * weight).sum((2, 3))
    union = ((prob + target) * weight).sum((2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return (wbce + wiou).mean()


def distill_loss(logits: torch.Tensor, teacher_prob: torch.Tensor) -> torch.Tensor:
    """BCE of the student's logits against the teacher's probabilities (soft targets, 1-class head)."""
    return F.binary_cross_entropy_with_logits(logits.float(), teacher_prob.float())


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, kind: str = "bce_dice") -> torch.Tensor:
    """``target``: float N1HW binary mask; ``kind``: config.LOSSES."""
    logits = logits.float()
    if kind == "structure":
        return structure_loss(logits, target)
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(torch.sigmoid(logits), target)
    labels = target[:, 0].long()
    prob = torch.softmax(logits, dim=1)
    onehot = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).float()
    return F.cross_entropy(logits, labels) + soft_dice_loss(prob[:, 1:], onehot[:, 1:])


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """N1HW foreground probability from either head."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else 1 - torch.softmax(logits, dim=1)[:, :1]
