"""Batched CIFAR augmentation: random crop with zero padding and horizontal flip.

Applied to a whole batch at once with one gather, on the batch's device, drawing from the
global torch RNG (which the trainer seeds and checkpoints).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BatchAugment"]


class BatchAugment(nn.Module):
    """Random crop with zero padding and random horizontal flip of a whole batch.

    Each image is shifted by an offset drawn uniformly from ``[-padding, padding]`` in both
    directions (the uncovered border is zero, as in ``RandomCrop(size, padding)``) and mirrored
    with probability 1/2 when ``flip``. The offsets and flips are drawn from the global torch
    CPU RNG (seeded and checkpointed by the trainer, so runs are reproducible and resumable);
    the gather runs on the batch's device, for uint8 or float images.

    Args:
        padding: Crop padding in pixels (>= 0; 0 disables the crop).
        flip: Random horizontal flips.

    Example:
        >>> x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
        >>> BatchAugment(padding=0, flip=False)(x).equal(x)
        True
        >>> torch.manual_seed(0); y = BatchAugment(padding=2)(x.expand(8, 1, 4, 4))
        <torch._C.Generator object at ...>
        >>> y.shape
        torch.Size([8, 1, 4, 4])
    """

    def __init__(self, padding: int = 4, flip: bool = True) -> None:
        super().__init__()
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise ValueError(f"padding must be an integer >= 0, got {padding!r}")
        self.padding = padding
        self.flip = bool(flip)

    def extra_repr(self) -> str:
        return f"padding={self.padding}, flip={self.flip}"

    def forward(self, images: Tensor) -> Tensor:
        """Returns the augmented ``(N, C, H, W)`` batch (same dtype and device)."""
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
        if self.padding == 0 and not self.flip:
            return images
        n, _, h, w = images.shape
        p = self.padding
        dy = torch.randint(0, 2 * p + 1, (n, 1)).to(images.device)
        dx = torch.randint(0, 2 * p + 1, (n, 1)).to(images.device)
        rows = dy + torch.arange(h, device=images.device)  # (N, H) rows of the padded image
        cols = torch.arange(w, device=images.device).expand(n, w)
        if self.flip:
            flips = (torch.rand(n, 1) < 0.5).to(images.device)
            cols = torch.where(flips, (w - 1) - cols, cols)
        cols = cols + dx
        padded = nn.functional.pad(images, (p, p, p, p)) if p else images
        batch = torch.arange(n, device=images.device).view(n, 1, 1)
        out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
        return out.permute(0, 3, 1, 2).contiguous()
