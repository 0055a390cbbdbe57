"""Avalanche adapter: train any ``SupervisedTemplate`` strategy with the HUG loss and replay.

:class:`HUGPlugin` is an Avalanche ``SupervisedPlugin`` (a subclass of Avalanche's
``ReplayPlugin``) that

* owns a :class:`~hug_plugins.proxies.ProxyHead` with one proxy per class of the *whole* stream
  (``num_classes`` is fixed up front, e.g. ``benchmark.n_classes``). The proxies are either
  static optimized (an energy-minimized configuration of all ``C`` classes, frozen) or learnable
  (initialized from that configuration and kept apart by HUG's inter-class term over all ``C``
  proxies), so the proxies of classes that arrive later never collide with earlier ones;
* replaces the strategy's criterion, for as long as a ``train``/``eval`` call runs, by
  ``hug_weight * HUG(features, y, proxies) + ce_weight * criterion(mb_output, y)``
  (``ce_weight = 0``: HUG instead of cross-entropy; ``> 0``: in addition);
* keeps a replay memory on Avalanche's storage policies (class-balanced by default, reservoir
  sampling or experience-balanced), whose samples join every minibatch through Avalanche's
  ``ReplayDataLoader``; HUG's intra-class term therefore pulls current and replayed samples
  alike to their proxies.

**What the model must expose.** The plugin's ``head`` must be the model's classification layer:
the features are the head's *input*, captured (without detaching) by a forward pre-hook, and the
model's output is the head's scaled-cosine logits ``scale * cos(x, w_c)``, so ``mb_output``
predicts the nearest proxy and Avalanche's accuracy and forgetting metrics work unchanged. Build
the model as ``nn.Sequential(backbone, plugin.head)`` or replace an existing classifier with
:meth:`HUGPlugin.attach` (``plugin.attach(model, "classifier")``). The backbone must return
``(B, feature_dim)`` features. Create the optimizer *after* attaching the head, so learnable
proxies are optimized.

**Traps of avalanche-lib 0.6.0 handled here** (also by :class:`ReplayMemoryPlugin`, usable as the
cross-entropy replay baseline):

* datasets without a ``targets_task_labels`` attribute make ``ClassBalancedBuffer`` crash on the
  second experience (its subsets gain task labels, so memory samples are ``(x, y, t)`` while the
  current ones are ``(x, y)`` and the merged batch cannot be collated): task labels (all 0) are
  added to the training data and to the data given to the buffer when missing;
* ``ReplayPlugin`` calls the deprecated ``ExemplarsBuffer.update``, whose deprecation wrapper runs
  ``warnings.simplefilter("once", DeprecationWarning)`` and so overrides the process's warning
  filters; the buffer is updated through its ``post_adapt`` hook instead;
* ``avalanche.checkpointing.save_checkpoint`` fails with dill on torch 2.14 (``Can't pickle
  sentinel``) because of the optimizer: :func:`save_strategy_checkpoint` excludes it and stores
  its ``state_dict``; :func:`load_strategy_checkpoint` rebinds the optimizer to the restored
  model and loads that state, so training resumes in the middle of a stream.

Reference:
    Liu, Yu, Weller, Schölkopf. "Generalizing and Decoupling Neural Collapse via Hyperspherical
    Uniformity Gap." ICLR 2023. https://arxiv.org/abs/2303.06484

Example:
    >>> import torch
    >>> from torch import nn
    >>> plugin = HUGPlugin(num_classes=4, feature_dim=8, mem_size=20)
    >>> model = nn.Sequential(nn.Linear(5, 8), plugin.head)
    >>> model(torch.randn(3, 5)).shape  # scaled-cosine logits of the nearest-proxy classifier
    torch.Size([3, 4])
    >>> plugin.loss_on(torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 0, 1])).ndim
    0
"""

from hug_plugins._extras import require_extra

require_extra("avalanche", "avalanche", "hug_plugins.continual (HUGPlugin)")

from hug_plugins.continual.plugin import HUGPlugin  # noqa: E402
from hug_plugins.continual.replay import (  # noqa: E402
    ReplayMemoryPlugin,
    StoragePolicyName,
    ensure_task_labels,
    make_storage_policy,
)

__all__ = [
    "HUGPlugin",
    "ReplayMemoryPlugin",
    "StoragePolicyName",
    "ensure_task_labels",
    "make_storage_policy",
]
