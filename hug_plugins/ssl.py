"""HUG for self-supervised learning: a drop-in replacement for lightly's ``NTXentLoss``.

Every instance of a batch is a class (the regime of generalized neural collapse, ``C > d + 1``):
:class:`HUGCriterion` makes the normalized instance means of the views uniform on the
hypersphere and pulls every view to its instance mean. With ``labels``, instances sharing a
label form one class (supervised-contrastive style). The guide (docs: Lightly) covers the
memory bank and DDP.

Reference:
    Liu, Yu, Weller, Schölkopf. "Generalizing and Decoupling Neural Collapse via Hyperspherical
    Uniformity Gap." ICLR 2023. https://arxiv.org/abs/2303.06484

Examples:
    >>> import torch
    >>> from hug_plugins import HUGCriterion
    >>> criterion = HUGCriterion()
    >>> out0 = torch.randn(8, 32, requires_grad=True)
    >>> out1 = torch.randn(8, 32, requires_grad=True)
    >>> loss = criterion(out0, out1)
    >>> loss.backward()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch import distributed as torch_dist

from hug_plugins._checks import check_labels, check_matrix, compute_dtype
from hug_plugins._extras import require_extra
from hug_plugins.functional.terms import (
    HUGConfig,
    HUGOptions,
    HUGTerms,
    class_means,
    inter_kernel,
    inter_term,
    intra_term,
    resolve_config,
    weighted_terms,
    with_hug_keywords,
)
from hug_plugins.functional.uniformity import autocast_disabled, pair_kernel_mean

require_extra("lightly", "lightly", "hug_plugins.ssl (HUGCriterion)")

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["HUGCriterion"]


class HUGCriterion(nn.Module):
    """Hyperspherical Uniformity Gap loss for multi-view self-supervised learning.

    Called like ``NTXentLoss``: ``loss_fn(out0, out1)``, or ``loss_fn(views)`` with a
    ``(B, k, d)`` tensor or a list of ``k >= 2`` views. With ``k`` views ``x_iv`` (normalized)
    per instance: ``mu_hat_i = normalize(mean_v x_iv)``, ``inter = U({mu_hat_i})`` (the
    configured uniformity measure), ``intra = mean_i mean_v ||x_iv - stopgrad(mu_hat_i)||``,
    ``loss = alpha * inter + beta * intra``.

    Reference:
        Liu, Yu, Weller, Schölkopf. "Generalizing and Decoupling Neural Collapse via
        Hyperspherical Uniformity Gap." ICLR 2023. https://arxiv.org/abs/2303.06484

    Args:
        config: A :class:`~hug_plugins.losses.HUGConfig` or a preset name; default the
            ``"ssl"`` preset (Riesz ``s = 2`` energy, alpha 4, beta 1, the full energy).
        memory_bank_size: ``0`` (no bank) or ``(num, dim)``: a lightly ``MemoryBankModule``
            of past instance means, extra constant points of the inter term.
        gather_distributed: Gather all ranks' views with ``lightly.utils.dist.gather`` (the
            loss of the global batch, gradients equal to one process's).
        **overrides: Keyword-only :class:`~hug_plugins.losses.HUGConfig` fields (``alpha``,
            ``beta``, ``inter``, ``kernel``, ``s``, ``intra``, ...), as in every adapter.

    Attributes:
        last_terms: :class:`~hug_plugins.losses.HUGTerms` of the last call (detached).

    Raises:
        ValueError: On invalid hyperparameters, a bad memory bank size, ``inter="mgd"`` with a
            bank, ``ce_weight > 0``, or ``gather_distributed=True`` without
            ``torch.distributed``.

    Examples:
        >>> import torch
        >>> loss_fn = HUGCriterion(alpha=1.0, beta=1.0, s=1.0)
        >>> out0, out1 = torch.randn(16, 8), torch.randn(16, 8)
        >>> loss = loss_fn(out0, out1)  # two views, each instance a class
        >>> views = torch.randn(16, 4, 8)  # or k = 4 views as a (B, k, d) tensor
        >>> loss = loss_fn(views, labels=torch.arange(16) % 5)  # supervised classes
        >>> sorted(loss_fn.last_terms._asdict())
        ['ce', 'inter', 'intra', 'loss']
        >>> bank_fn = HUGCriterion(memory_bank_size=(64, 8))  # extra negatives
        >>> loss = bank_fn(out0, out1)
    """

    last_terms: HUGTerms | None

    @with_hug_keywords("ssl")
    def __init__(
        self,
        config: HUGConfig | str | None = None,
        *,
        memory_bank_size: int | Sequence[int] = 0,
        gather_distributed: bool = False,
        **overrides: Unpack[HUGOptions],
    ) -> None:
        super().__init__()
        config = resolve_config(config, overrides, default="ssl")
        if config.ce_weight > 0:
            raise ValueError("ce_weight > 0 needs class proxies; HUGCriterion has none")
        if config.energy_mode == "rows":
            raise ValueError(
                "HUGCriterion computes the full energy of the batch: energy_mode='rows'"
            )
        if not isinstance(gather_distributed, bool):
            raise ValueError(f"gather_distributed must be a bool, got {gather_distributed!r}")
        if gather_distributed and not torch_dist.is_available():
            raise ValueError(
                "gather_distributed is True but torch.distributed is not available. "
                "Set gather_distributed=False or install a torch build with distributed support."
            )
        self._kernel = config.validate()
        self.config = config
        self.gather_distributed = gather_distributed
        # Lightly's bank validates the size: 0, or a (num_features, dim) tuple.
        from lightly.models.modules.memory_bank import MemoryBankModule

        self.memory_bank = MemoryBankModule(
            size=memory_bank_size,
            gather_distributed=gather_distributed,
            feature_dim_first=False,
        )
        self.bank_size: tuple[int, ...] = tuple(self.memory_bank.size)
        if self.bank_size[0] > 0 and config.inter == "mgd":
            raise ValueError("inter='mgd' cannot be combined with a memory bank")
        self.last_terms = None

    def extra_repr(self) -> str:
        c = self.config
        text = f"alpha={c.alpha}, beta={c.beta}, inter={c.inter!r}, kernel={c.kernel!r}, "
        text += f"intra={c.intra!r}"
        if self.bank_size[0] > 0:
            text += f", memory_bank_size={self.bank_size}"
        return text + f", gather_distributed={self.gather_distributed}"

    # ------------------------------------------------------------------------------- input

    @staticmethod
    def _stack_views(out0: Tensor | Sequence[Tensor], out1: Tensor | None) -> Tensor:
        """Returns the views as one ``(B, k, d)`` tensor, validating shapes."""
        if out1 is not None:
            if not isinstance(out0, Tensor) or not isinstance(out1, Tensor):
                raise ValueError("out0 and out1 must both be tensors of shape (batch_size, dim)")
            if out0.ndim != 2 or out1.ndim != 2:
                raise ValueError(
                    "out0 and out1 must have shape (batch_size, dim), got "
                    f"{tuple(out0.shape)} and {tuple(out1.shape)}"
                )
            if out0.shape != out1.shape:
                raise ValueError(
                    f"out0 and out1 must have the same shape, got {tuple(out0.shape)} "
                    f"and {tuple(out1.shape)}"
                )
            views = [out0, out1]
        elif isinstance(out0, Tensor):
            if out0.ndim != 3:
                raise ValueError(
                    "a single tensor must hold all views with shape (batch_size, num_views, "
                    f"dim); got shape {tuple(out0.shape)} (pass out1 for two 2-D views)"
                )
            if out0.shape[1] < 2:
                raise ValueError(f"need at least 2 views per instance, got {out0.shape[1]}")
            return out0
        elif isinstance(out0, Sequence) and not isinstance(out0, str):
            views = list(out0)
            if len(views) < 2:
                raise ValueError(f"need at least 2 views per instance, got {len(views)}")
            for index, view in enumerate(views):
                if not isinstance(view, Tensor) or view.ndim != 2:
                    shape = tuple(view.shape) if isinstance(view, Tensor) else type(view).__name__
                    raise ValueError(f"view {index} must have shape (batch_size, dim), got {shape}")
                if view.shape != views[0].shape:
                    raise ValueError(
                        f"all views must have the same shape, got {tuple(views[0].shape)} "
                        f"(view 0) and {tuple(view.shape)} (view {index})"
                    )
        else:
            raise ValueError(
                "out0 must be a (batch_size, dim) tensor with out1, a (batch_size, num_views, "
                f"dim) tensor or a list of views; got {type(out0).__name__}"
            )
        dtypes = {view.dtype for view in views}
        dtype = views[0].dtype if len(dtypes) == 1 else torch.float32
        return torch.stack([view.to(dtype) for view in views], dim=1)

    # ------------------------------------------------------------------------------- loss

    def terms(
        self,
        out0: Tensor | Sequence[Tensor],
        out1: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> HUGTerms:
        """Computes the loss and its weighted inter and intra terms.

        Args:
            out0: The first view ``(B, d)`` (with ``out1``), all views as a ``(B, k, d)``
                tensor, or a list of ``k >= 2`` views of shape ``(B, d)``.
            out1: The second view ``(B, d)``, or ``None`` when ``out0`` holds all views.
            labels: Optional ``(B,)`` non-negative integer labels; instances sharing a label
                form one class. ``None``: every instance is its own class.

        Returns:
            :class:`hug_plugins.losses.HUGTerms` of scalar tensors.

        Raises:
            ValueError: On mismatched shapes, fewer than two views, a one-instance batch
                (global batch with ``gather_distributed``), non-finite values, bad labels or
                labels combined with a memory bank.
        """
        views = self._stack_views(out0, out1)
        batch, num_views, dim = views.shape
        check_matrix(views.reshape(batch * num_views, dim), "features")
        if labels is not None:
            check_labels(labels, batch, None)
            if self.bank_size[0] > 0:
                raise ValueError("labels cannot be combined with a memory bank")
        if self.bank_size[0] > 0 and self.bank_size[1] != dim:
            raise ValueError(
                f"memory bank size {self.bank_size} does not match the feature dimension {dim}"
            )
        from lightly.utils import dist as lightly_dist

        world = lightly_dist.world_size() if self.gather_distributed else 1
        if batch * world < 2:
            raise ValueError(
                "HUGCriterion needs at least 2 instances in the (global) batch, got "
                f"{batch * world}; use a larger batch or gather_distributed=True under DDP"
            )
        dtype = compute_dtype(views)
        config = self.config
        with autocast_disabled(views.device.type):
            x_local = F.normalize(views.to(dtype), dim=2, eps=1e-12)
            bank: Tensor | None = None
            if self.bank_size[0] > 0:
                local_means = F.normalize(x_local.detach().mean(1), dim=1, eps=1e-12)
                _, bank = self.memory_bank(local_means, update=views.requires_grad)
            if world > 1:
                x_hat = torch.cat(lightly_dist.gather(x_local), 0)
                if labels is not None:
                    labels = torch.cat(lightly_dist.gather(labels.long()), 0)
            else:
                x_hat = x_local
            num = x_hat.shape[0]
            device = x_hat.device
            rows = x_hat.reshape(num * num_views, dim)
            present: Tensor | None = None  # every instance is its own (present) class
            if labels is None:
                slot = torch.arange(num, device=device)
            else:
                # Class slot of an instance = index of the first instance with its label.
                labels = labels.long().to(device)
                slot = (labels[:, None] == labels[None, :]).to(torch.uint8).argmax(1)
            row_slot = slot.repeat_interleave(num_views)
            means, counts = class_means(rows, row_slot, num)
            if labels is not None:
                present = (counts > 0).to(dtype)
            mu_hat = F.normalize(means, dim=1, eps=1e-12)
            targets = (mu_hat.detach() if config.detach_proxies else mu_hat).index_select(
                0, row_slot
            )
            intra = intra_term(rows, targets, labels=row_slot, counts=counts, config=config)
            if bank is None:
                inter = inter_term(
                    mu_hat, labels=row_slot, counts=counts, config=config, kernel=self._kernel,
                    present=present,
                )  # fmt: skip
            else:
                inter = self._inter_with_bank(mu_hat, bank.to(device=device, dtype=dtype))
        terms = weighted_terms(config, inter, intra)
        self.last_terms = terms.detached()
        return terms

    def _inter_with_bank(self, mu_hat: Tensor, bank: Tensor) -> Tensor:
        """Energy of the batch means against batch means and constant bank entries."""
        config = self.config
        num = mu_hat.shape[0]
        kernel = inter_kernel(config, self._kernel)
        columns = torch.cat([mu_hat, bank.detach()], 0)
        exclude = torch.arange(num, device=mu_hat.device)
        value = pair_kernel_mean(mu_hat, columns, kernel, exclude, None, None, config.chunk_size)
        if config.inter == "mhs":
            # minus the smooth minimum distance over the ordered pairs counted above
            num_pairs = num * (num - 1 + bank.shape[0])
            return config.separation_t * (value + math.log(max(num_pairs, 1)))
        return value

    def forward(
        self,
        out0: Tensor | Sequence[Tensor],
        out1: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Tensor:
        """Returns the scalar HUG loss of a batch of views (see :meth:`terms`).

        Args:
            out0: Projections of the first view ``(B, d)``, or all views as ``(B, k, d)`` or a
                list of ``(B, d)`` tensors.
            out1: Projections of the second view ``(B, d)`` (``None`` if ``out0`` has all).
            labels: Optional ``(B,)`` integer labels (instances sharing one form a class).

        Returns:
            The loss, a float32 scalar (float64 for float64 input).
        """
        return self.terms(out0, out1, labels).loss
