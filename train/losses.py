"""BCE + Dice (1 output channel, sigmoid) or CE + Dice (2+ classes, softmax; Dice on the foreground classes)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image, averaged (eps smooths images whose mask is empty)."""
    dims = tuple(range(1, prob.ndim))
    inter = (prob * target).sum(dims)
    return (1 - (2 * inter + eps) / (prob.sum(dims) + target.sum(dims) + eps)).mean()


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``target``: float N1HW binary mask."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(torch.sigmoid(logits), target)
    labels = target[:, 0].long()
    prob = torch.softmax(logits, dim=1)
    onehot = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).float()
    return F.cross_entropy(logits, labels) + soft_dice_loss(prob[:, 1:], onehot[:, 1:])


def foreground_probability(logits: torch.Tensor) -> torch.Tensor:
    """N1HW foreground probability from either head."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else 1 - torch.softmax(logits, dim=1)[:, :1]
