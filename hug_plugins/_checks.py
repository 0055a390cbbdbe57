"""Input validation shared by the losses, heads and metrics.

Every public entry point validates its tensors here so that bad input raises a ``ValueError``
whose message names the problem, instead of producing a NaN or a silently wrong answer.

Value checks (finiteness, label range) read one boolean back from the device on the CPU and
raise a precise ``ValueError``. On a GPU, and whenever ``torch.compile`` traces the code, they
are device-side asserts instead (``torch._assert_async``): no host synchronisation and no
graph break; a failure raises a ``RuntimeError`` with the same message at the next
synchronisation. :func:`set_validation` switches them off.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_VALIDATE = True


def set_validation(enabled: bool) -> None:
    """Turns the data-dependent checks (finiteness, label range) on or off globally.

    Shape and dtype checks are free and always run. The value checks need one device-to-host
    read each; they are on by default.

    Args:
        enabled: Whether to run the value checks.
    """
    global _VALIDATE
    _VALIDATE = bool(enabled)


def validation_enabled() -> bool:
    """Returns whether value checks (finiteness, label range) are active."""
    return _VALIDATE


def asynchronous_checks(x: Tensor) -> bool:
    """Whether value checks on ``x`` run as device-side asserts: on a GPU (no host sync) and
    under ``torch.compile`` (no graph break); on the CPU they read the device and raise.

    Examples:
        >>> asynchronous_checks(torch.zeros(1))
        False
    """
    return x.device.type != "cpu" or torch.compiler.is_compiling()


def device_assert(condition: Tensor, message: str) -> None:
    """Asserts a device boolean without reading it back (raises at the next synchronisation)."""
    torch._assert_async(condition, message)


def check_matrix(x: Tensor, name: str, dim: int | None = None, values: bool = True) -> None:
    """Checks that ``x`` is a finite floating-point (n, d) tensor.

    Args:
        x: The tensor to check.
        name: Name used in the error message.
        dim: Required size of the second axis, if any.
        values: Whether to check finiteness too (one device read; see :func:`set_validation`).

    Raises:
        ValueError: On a wrong type, rank, width, dtype, an empty tensor or non-finite values.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} columns, got shape {tuple(x.shape)}")
    if values and _VALIDATE:
        if asynchronous_checks(x):
            device_assert(torch.isfinite(x).all(), _non_finite(name))
        elif not bool(_finite_flag(x)):
            _raise_non_finite(x, name)


def _finite_flag(x: Tensor) -> Tensor:
    """Device boolean: a sum is finite iff every term is (one pass), barring overflow."""
    return torch.isfinite(x.sum())


def raise_non_finite(x: Tensor, name: str) -> None:
    """Raises ``ValueError`` if ``x`` holds a NaN or inf (a no-op with validation off)."""
    if _VALIDATE:
        if asynchronous_checks(x):
            device_assert(torch.isfinite(x).all(), _non_finite(name))
        else:
            _raise_non_finite(x, name)


def _non_finite(name: str) -> str:
    return f"{name} contains non-finite values (NaN or inf)"


def _raise_non_finite(x: Tensor, name: str) -> None:
    # The sum can overflow to inf with finite entries: confirm element-wise before raising.
    if not bool(torch.isfinite(x).all()):
        raise ValueError(_non_finite(name))


def check_batch(
    features: Tensor,
    labels: Tensor,
    num_classes: int | None,
    proxies: Tensor | None = None,
    proxy_values: bool = True,
    values: bool = True,
) -> None:
    """Validates a training batch with a single device read for all value checks.

    Shapes and dtypes are checked first (free); then finiteness of ``features`` (and
    ``proxies``) and the label range are evaluated on the device and read back together, so a
    GPU step pays one synchronisation instead of four.

    Args:
        features: ``(B, d)`` features.
        labels: ``(B,)`` integer labels.
        num_classes: Exclusive upper bound of the labels, if known.
        proxies: Optional ``(C, d)`` proxies (``d`` must match ``features``).
        proxy_values: Whether to check the proxies' values too (callers that check them once
            per version, e.g. for static proxies, pass ``False``).
        values: Whether to check values at all (``False``: shapes and dtypes only, for callers
            that check values after the computation with :func:`check_deferred`).

    Raises:
        ValueError: Naming the first problem found.
    """
    if proxies is not None:
        check_matrix(proxies, "proxies", values=False)
        check_matrix(features, "features", dim=proxies.shape[1], values=False)
    else:
        check_matrix(features, "features", values=False)
    check_labels(labels, features.shape[0], num_classes, values=False)
    if not (_VALIDATE and values):
        return
    low, high = torch.aminmax(labels)
    bound = f"[0, {num_classes})" if num_classes is not None else "[0, inf)"
    if asynchronous_checks(features):
        device_assert(torch.isfinite(features).all(), _non_finite("features"))
        device_assert(low >= 0, f"labels out of range {bound}")
        if num_classes is not None:
            device_assert(high < num_classes, f"labels out of range {bound}")
        if proxies is not None and proxy_values:
            device_assert(torch.isfinite(proxies).all(), _non_finite("proxies"))
        return
    flags = [_finite_flag(features), low >= 0]
    if num_classes is not None:
        flags.append(high < num_classes)
    check_proxies = proxies is not None and proxy_values
    if proxies is not None and proxy_values:
        flags.append(_finite_flag(proxies))
    ok = torch.stack([f.to(features.device) for f in flags]).tolist()
    if not ok[0]:
        _raise_non_finite(features, "features")
    if not all(ok[1:3]):
        raise ValueError(f"labels out of range {bound}: min {int(low)}, max {int(high)}")
    if proxies is not None and check_proxies and not ok[-1]:
        _raise_non_finite(proxies, "proxies")


def check_deferred(
    label_bounds: Tensor,
    norm_sums: Tensor,
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    proxies: Tensor,
) -> None:
    """Raises what :func:`check_batch` would, from reductions computed alongside a loss.

    A loss that already reduces its inputs (the fused P-HUG node computes every feature and
    proxy norm) gets their finiteness for ``O(B + C)`` instead of two passes over the
    ``(B, d)`` and ``(C, d)`` tensors; it computes with labels clamped into range, then reads
    these values (two small device reads) and raises before the loss is returned.

    Args:
        label_bounds: ``[min, max]`` of the labels as given.
        norm_sums: Sums of the feature norms and of the proxy norms (non-finite iff a value
            is, barring overflow, which is confirmed element-wise before raising).
        features: The features.
        labels: The labels as given.
        num_classes: Exclusive upper bound of the labels.
        proxies: The proxies.

    Raises:
        ValueError: In the order of :func:`check_batch`.
    """
    if asynchronous_checks(features):
        device_assert(torch.isfinite(norm_sums[0]), _non_finite("features"))
        bound = f"labels out of range [0, {num_classes})"
        device_assert((label_bounds[0] >= 0) & (label_bounds[1] < num_classes), bound)
        device_assert(torch.isfinite(norm_sums[1]), _non_finite("proxies"))
        return
    low, high = label_bounds.tolist()
    feature_sum, proxy_sum = norm_sums.tolist()
    if not math.isfinite(feature_sum):
        _raise_non_finite(features, "features")
    if low < 0 or high >= num_classes:
        raise ValueError(f"labels out of range [0, {num_classes}): min {low}, max {high}")
    if not math.isfinite(proxy_sum):
        _raise_non_finite(proxies, "proxies")


def check_labels(
    labels: Tensor, n: int, num_classes: int | None, name: str = "labels", values: bool = True
) -> None:
    """Checks that ``labels`` is an integer vector of length ``n`` with values in range.

    Args:
        labels: Class indices.
        n: Required length (number of samples).
        num_classes: Exclusive upper bound of the labels, if known.
        name: Name used in the error message.

    Raises:
        ValueError: On a wrong type, shape, dtype or labels out of ``[0, num_classes)``.
    """
    if not isinstance(labels, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(labels).__name__}")
    if labels.ndim != 1:
        raise ValueError(f"{name} must have shape (n,), got shape {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
    if labels.shape[0] != n:
        raise ValueError(f"{name} has {labels.shape[0]} entries but there are {n} samples")
    if values and _VALIDATE and n > 0 and asynchronous_checks(labels):
        low_t, high_t = torch.aminmax(labels)
        bound = f"[0, {num_classes})" if num_classes is not None else "[0, inf)"
        device_assert(low_t >= 0, f"{name} out of range {bound}")
        if num_classes is not None:
            device_assert(high_t < num_classes, f"{name} out of range {bound}")
    elif values and _VALIDATE and n > 0:
        low_t, high_t = torch.aminmax(labels)
        low, high = int(low_t), int(high_t)
        if low < 0 or (num_classes is not None and high >= num_classes):
            bound = f"[0, {num_classes})" if num_classes is not None else "[0, inf)"
            raise ValueError(f"{name} out of range {bound}: min {low}, max {high}")


def compute_dtype(x: Tensor) -> torch.dtype:
    """Returns the dtype energies are computed in: float64 stays float64, all else float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32
