"""PRNet's training loss: SmoothL1 plus a weighted focal term on the sigmoid map (the reference's)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

FOCAL_WEIGHT = 5.0  # weight of the focal term against SmoothL1 (reference)
FOCAL_ALPHA = 0.5  # focal loss alpha (reference)
FOCAL_GAMMA = 4.0  # focal loss gamma (reference)


def prnet_loss(logits: torch.Tensor, mask: torch.Tensor, *, focal_weight: float = FOCAL_WEIGHT,
               alpha: float = FOCAL_ALPHA, gamma: float = FOCAL_GAMMA) -> torch.Tensor:
    """``SmoothL1(P, M) + focal_weight * mean(FL(P, M))`` with ``P = sigmoid(logits)``; a scalar.

    ``logits, mask: (B, 1, H, W)``; ``mask`` in ``[0, 1]``. The focal term (Lin et al.) per pixel:
    ``FL = -alpha M (1 - P)^gamma log P - (1 - alpha) (1 - M) P^gamma log(1 - P)``, with the logs
    taken as log-sigmoids of the logits so that confident pixels stay finite.
    """
    if logits.shape != mask.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and mask {tuple(mask.shape)} differ in shape")
    mask = mask.to(logits.dtype)
    p = torch.sigmoid(logits)
    smooth_l1 = F.smooth_l1_loss(p, mask)
    focal = -(alpha * mask * (1.0 - p) ** gamma * F.logsigmoid(logits)
              + (1.0 - alpha) * (1.0 - mask) * p**gamma * F.logsigmoid(-logits))
    return smooth_l1 + focal_weight * focal.mean()
