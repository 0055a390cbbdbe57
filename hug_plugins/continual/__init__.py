"""Avalanche adapter: train any ``SupervisedTemplate`` strategy with the HUG loss.

:class:`HUGPlugin` is the strategy's criterion (and, as Avalanche does for a criterion that is
a plugin, one of its plugins): it owns a proxy head with one proxy per class of the whole
stream and computes HUG on the head's input. Replay is Avalanche's ``ReplayPlugin`` with its
storage policies, composed in ``plugins=[...]``; :class:`ReplayMemoryPlugin` is the same
plugin with two avalanche-lib 0.6 traps handled (data without task labels, and the deprecated
buffer update that resets the warning filters). :class:`NeuralCollapsePluginMetric` reports
NC1-NC4 per experience to Avalanche's loggers. Written against avalanche-lib 0.6.

Reference:
    Liu, Yu, Weller, Schölkopf. "Generalizing and Decoupling Neural Collapse via Hyperspherical
    Uniformity Gap." ICLR 2023. https://arxiv.org/abs/2303.06484

Examples:
    >>> import torch
    >>> from torch import nn
    >>> plugin = HUGPlugin(num_classes=4, feature_dim=8)
    >>> model = nn.Sequential(nn.Linear(5, 8), plugin.head)
    >>> model(torch.randn(3, 5)).shape  # scaled-cosine logits of the nearest-proxy classifier
    torch.Size([3, 4])
"""

from hug_plugins._extras import require_extra

require_extra("avalanche", "avalanche", "hug_plugins.continual (HUGPlugin)")

from hug_plugins.continual.metric import NeuralCollapsePluginMetric  # noqa: E402
from hug_plugins.continual.plugin import HUGPlugin  # noqa: E402
from hug_plugins.continual.replay import (  # noqa: E402
    ReplayMemoryPlugin,
    StoragePolicyName,
    ensure_task_labels,
    make_storage_policy,
)

__all__ = [
    "HUGPlugin",
    "NeuralCollapsePluginMetric",
    "ReplayMemoryPlugin",
    "StoragePolicyName",
    "ensure_task_labels",
    "make_storage_policy",
]
