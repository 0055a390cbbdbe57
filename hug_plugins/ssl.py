"""HUG for self-supervised learning: a drop-in replacement for lightly's ``NTXentLoss``.

In contrastive self-supervised learning every image is its own class, so the number of classes
``C`` (the batch size) is far larger than the feature dimension ``d``: exactly the regime of
generalized neural collapse, where a simplex ETF does not exist and the best one can ask of the
class means is that they be *hyperspherically uniform*. :class:`HUGCriterion` applies the
class-mean HUG objective to the views of a batch:

* each instance ``i`` with views ``z_i1, ..., z_ik`` (``k >= 2``) is a class; its class mean
  is ``mu_hat_i = normalize(mean_v normalize(z_iv))``;
* the **inter** term is the hyperspherical uniformity of ``{mu_hat_i}`` (minimum energy with a
  Riesz, log or Gaussian kernel, smooth maximum separation, or maximum Gram log-determinant,
  see :mod:`hug_plugins.functional.uniformity`);
* the **intra** term pulls every normalized view to its (stop-gradient) class mean, i.e. the
  views of one instance to each other.

``loss = alpha * inter + beta * intra``, the terms computed exactly as
:class:`hug_plugins.losses.ClassMeanHUGLoss` computes them (shared code), in float32 with
autocast disabled, chunked in memory, without Python loops over instances and without host
synchronisation beyond the optional value checks (finiteness, label sign; switched off with
:func:`hug_plugins.set_validation`) and the write pointer of lightly's memory bank.

With ``labels`` the samples sharing a label form one class, supervised-contrastive style: the
class mean runs over all views of all its instances, and the inter term over the classes
present in the (global) batch.

Reference:
    Liu, Yu, Weller, Schölkopf. "Generalizing and Decoupling Neural Collapse via Hyperspherical
    Uniformity Gap." ICLR 2023. https://arxiv.org/abs/2303.06484

Example:
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
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch import distributed as torch_dist

from hug_plugins._checks import check_labels, check_matrix, compute_dtype
from hug_plugins._extras import require_extra
from hug_plugins.functional.terms import (
    HUGConfig,
    HUGTerms,
    IntraMeasure,
    class_means,
    inter_kernel,
    inter_term,
    intra_term,
    weighted_terms,
)
from hug_plugins.functional.uniformity import DEFAULT_EPS, autocast_disabled, pair_kernel_mean

require_extra("lightly", "lightly", "hug_plugins.ssl (HUGCriterion)")

__all__ = ["DEFAULT_PARAMS", "HUGCriterion", "Uniformity"]

Uniformity = Literal["riesz", "log", "gaussian", "mhs", "mgd"]
"""Uniformity measure of the inter term (see :class:`HUGCriterion`)."""

DEFAULT_PARAMS: dict[str, float] = {
    "riesz": 2.0,
    "log": 0.0,
    "gaussian": 2.0,
    "mhs": 0.05,
    "mgd": 1.0,
}
"""Default ``param`` of each uniformity measure: Riesz ``s``, Gaussian ``t``, MHS softmin
temperature, MGD Gram bandwidth (unused by ``"log"``)."""


class HUGCriterion(nn.Module):
    """Hyperspherical Uniformity Gap loss for multi-view self-supervised learning.

    A drop-in replacement for ``lightly.loss.NTXentLoss``: same call ``loss_fn(out0, out1)``,
    same ``memory_bank_size`` and ``gather_distributed`` arguments. Each instance of the batch
    is a class; with ``k`` views ``z_iv`` per instance (``x_iv = normalize(z_iv)``)::

        mu_hat_i = normalize(mean_v x_iv)
        inter    = U({mu_hat_i})                                 (uniformity, lower = uniform)
        intra    = mean_i mean_v ||x_iv - stopgrad(mu_hat_i)||   (pull to the class mean)
        loss     = alpha * inter + beta * intra

    ``U`` is chosen by ``uniformity`` with its parameter ``param``:

    * ``"riesz"`` (default): mean over pairs ``i != j`` of ``||mu_hat_i - mu_hat_j||^-s``
      (``param = s``, default 2 as the paper's MHE-HUG; ``s < 0`` gives ``-||.||^-s``,
      ``s = 0`` the log kernel);
    * ``"log"``: mean of ``log(1 / ||mu_hat_i - mu_hat_j||)``;
    * ``"gaussian"``: ``log mean exp(-t ||mu_hat_i - mu_hat_j||^2)`` (``param = t``, default 2;
      Wang & Isola's uniformity, here of the instance means);
    * ``"mhs"``: minus the smooth minimum pairwise distance (``param`` = softmin temperature in
      distance units, default 0.05);
    * ``"mgd"``: minus ``log det`` of the Gaussian Gram matrix ``exp(-gamma ||.||^2)``
      (``param = gamma``, default 1; needs the full ``B x B`` matrix).

    **Labels.** With ``labels`` (one per instance), instances sharing a label form one class:
    ``mu_hat_c`` averages all views of all its instances, the inter term runs over the classes
    present in the batch and the intra term is the mean over classes of the mean pull of their
    views. Classes are identified on the device (an ``N x N`` label comparison), with no host
    synchronisation.

    **Memory bank.** With ``memory_bank_size=(num, dim)`` a lightly ``MemoryBankModule`` keeps
    the normalized instance means ``mu_hat_i`` of past batches (detached; the bank is updated
    only when the inputs require gradients, as in lightly). They enter the inter term as extra
    constant points ``b_m``: the energy becomes the mean of the kernel over the ordered pairs
    ``(i, j)`` with ``i`` a batch mean and ``j`` a batch mean (``j != i``) or a bank entry; the
    bank-bank pairs are constant and left out. Without a bank this is exactly the energy of
    the batch means. For ``"mhs"`` the softmin runs over the same pairs; ``"mgd"`` has no bank
    form. A bank cannot be combined with ``labels`` (its entries carry no label).

    **Distributed.** With ``gather_distributed=True`` the views (and labels) of all ranks are
    gathered with ``lightly.utils.dist.gather``, which carries gradients back, and every rank
    computes the loss of the *global* batch, through the gathered copy of its own slice too.
    Each rank's local features then receive ``world_size`` times the global-loss gradient
    (the gather's backward sums the gradients of all ranks), and DDP's averaging over ranks
    divides it back: the parameter gradients equal those of a single process on the
    concatenated batch, the same property as ``NTXentLoss``. Every rank must have the same
    batch size. The pair computation then costs ``O((world_size * B)^2 d)`` per rank.

    Reference:
        Liu, Yu, Weller, Schölkopf. "Generalizing and Decoupling Neural Collapse via
        Hyperspherical Uniformity Gap." ICLR 2023. https://arxiv.org/abs/2303.06484

    The defaults (``alpha=4, beta=1``, Riesz ``s=2``) are tuned for SimCLR-style training
    (``integrations/selfsupervised.py``, quick preset: best kNN accuracy among the weights,
    kernels and exponents tried); they are not the paper's classification weights
    (0.15 / 0.015).

    Args:
        alpha: Weight of the inter (uniformity) term, >= 0.
        beta: Weight of the intra (pull) term, >= 0.
        uniformity: ``"riesz"``, ``"log"``, ``"gaussian"``, ``"mhs"`` or ``"mgd"``.
        param: Parameter of the measure (see above); ``None`` uses :data:`DEFAULT_PARAMS`.
        intra: ``"distance"``, ``"squared_distance"`` or ``"max_distance"`` (per class).
        detach_target: Whether the class means are detached in the intra term.
        memory_bank_size: ``0`` (no bank) or ``(num, dim)`` as lightly 1.6 requires.
        gather_distributed: Gather the features of all ranks before computing the loss.
        eps: Distance floor of every distance and kernel.
        chunk_size: Rows per block of the pair sums (default: automatic).

    Attributes:
        last_terms: :class:`hug_plugins.losses.HUGTerms` of the last call (detached):
            ``loss``, ``inter`` (already times ``alpha``) and ``intra`` (times ``beta``).

    Raises:
        ValueError: On invalid hyperparameters, a bad memory bank size, ``"mgd"`` with a bank,
            or ``gather_distributed=True`` without ``torch.distributed``.

    Examples:
        >>> import torch
        >>> from hug_plugins import HUGCriterion
        >>> loss_fn = HUGCriterion(alpha=1.0, beta=1.0, uniformity="riesz", param=1.0)
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

    def __init__(
        self,
        alpha: float = 4.0,
        beta: float = 1.0,
        uniformity: Uniformity = "riesz",
        param: float | None = None,
        intra: IntraMeasure = "distance",
        detach_target: bool = True,
        memory_bank_size: int | Sequence[int] = 0,
        gather_distributed: bool = False,
        eps: float = DEFAULT_EPS,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if uniformity not in get_args(Uniformity):
            raise ValueError(
                f"uniformity must be one of {list(get_args(Uniformity))}, got {uniformity!r}"
            )
        value = DEFAULT_PARAMS[uniformity] if param is None else param
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"param must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"param must be finite, got {value}")
        if uniformity in ("gaussian", "mhs", "mgd") and value <= 0:
            raise ValueError(f"param of uniformity={uniformity!r} must be > 0, got {value}")
        if not isinstance(detach_target, bool):
            raise ValueError(f"detach_target must be a bool, got {detach_target!r}")
        if not isinstance(gather_distributed, bool):
            raise ValueError(f"gather_distributed must be a bool, got {gather_distributed!r}")
        if gather_distributed and not torch_dist.is_available():
            raise ValueError(
                "gather_distributed is True but torch.distributed is not available. "
                "Set gather_distributed=False or install a torch build with distributed support."
            )
        inter_measure: Literal["mhe", "mhs", "mgd"] = (
            "mhs" if uniformity == "mhs" else "mgd" if uniformity == "mgd" else "mhe"
        )
        kernel: Literal["riesz", "log", "gaussian"] = (
            "gaussian" if uniformity == "gaussian" else "log" if uniformity == "log" else "riesz"
        )
        config = HUGConfig(
            alpha=alpha,
            beta=beta,
            inter=inter_measure,
            kernel=kernel,
            s=value if uniformity == "riesz" else 2.0,
            t=value if uniformity == "gaussian" else 2.0,
            separation_t=value if uniformity == "mhs" else 0.05,
            mgd_gamma=value if uniformity == "mgd" else 1.0,
            intra=intra,
            intra_reduction="class_mean",
            detach_proxies=detach_target,
            energy_mode="full",
            eps=eps,
            chunk_size=chunk_size,
        )
        self._kernel = config.validate()  # raises ValueError naming the bad field
        self.config = config
        self.uniformity: Uniformity = uniformity
        self.param = value
        self.gather_distributed = gather_distributed
        # Lightly's bank validates the size: 0, or a (num_features, dim) tuple.
        from lightly.models.modules.memory_bank import MemoryBankModule

        self.memory_bank = MemoryBankModule(
            size=memory_bank_size,
            gather_distributed=gather_distributed,
            feature_dim_first=False,
        )
        self.bank_size: tuple[int, ...] = tuple(self.memory_bank.size)
        if self.bank_size[0] > 0 and uniformity == "mgd":
            raise ValueError("uniformity='mgd' cannot be combined with a memory bank")
        self.last_terms = None

    def extra_repr(self) -> str:
        c = self.config
        text = f"alpha={c.alpha}, beta={c.beta}, uniformity={self.uniformity!r}, "
        text += f"param={self.param}, intra={c.intra!r}"
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
