"""hug-plugins: the Hyperspherical Uniformity Gap (HUG) loss and generalized neural collapse.

Core pieces:

* :mod:`hug_plugins.functional`: the losses as functions and the uniformity measures
  (hyperspherical energies, separation, Gram log-determinant), chunked and differentiable.
* :mod:`hug_plugins.losses`: :class:`HUGLoss` (proxy form) and :class:`ClassMeanHUGLoss`.
* :mod:`hug_plugins.proxies`: :class:`ProxyHead` and uniform constructors.
* :mod:`hug_plugins.metrics`: streaming NC1-NC4 / GNC2 torchmetrics.

Reference:
    Liu, Yu, Weller, Schölkopf. "Generalizing and Decoupling Neural Collapse via Hyperspherical
    Uniformity Gap." ICLR 2023. https://arxiv.org/abs/2303.06484
"""

from hug_plugins._checks import set_validation
from hug_plugins.functional.uniformity import (
    energy_rows,
    gaussian_energy,
    gram_log_det,
    hyperspherical_energy,
    log_energy,
    min_separation,
    riesz_energy,
    soft_separation,
)
from hug_plugins.losses import (
    PAPER_WEIGHTS,
    ClassMeanHUGLoss,
    HUGConfig,
    HUGLoss,
    HUGTerms,
    preset_config,
)
from hug_plugins.proxies import (
    ProxyHead,
    cross_polytope,
    minimize_energy,
    optimized_proxies,
    random_proxies,
    simplex_etf,
)

__version__ = "0.2.0"

_LAZY = {
    "HUGCriterion": "hug_plugins.ssl",
    "HUGPlugin": "hug_plugins.continual",
    "NeuralCollapseCallback": "hug_plugins.lightning",
    "NeuralCollapsePluginMetric": "hug_plugins.continual",
    "NCMAgreement": "hug_plugins.metrics",
    "NeuralCollapseMetrics": "hug_plugins.metrics",
    "reference_energy": "hug_plugins.metrics",
}


def __getattr__(name: str) -> object:
    """Imports the metrics (torchmetrics) and the framework adapters only when first used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hug_plugins' has no attribute {name!r}")


__all__ = [
    "PAPER_WEIGHTS",
    "ClassMeanHUGLoss",
    "HUGConfig",
    "HUGCriterion",
    "HUGLoss",
    "HUGPlugin",
    "HUGTerms",
    "NCMAgreement",
    "NeuralCollapseCallback",
    "NeuralCollapseMetrics",
    "NeuralCollapsePluginMetric",
    "ProxyHead",
    "cross_polytope",
    "energy_rows",
    "gaussian_energy",
    "gram_log_det",
    "hyperspherical_energy",
    "log_energy",
    "min_separation",
    "minimize_energy",
    "optimized_proxies",
    "preset_config",
    "random_proxies",
    "reference_energy",
    "riesz_energy",
    "set_validation",
    "simplex_etf",
    "soft_separation",
]
