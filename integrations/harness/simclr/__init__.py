"""SimCLR-style self-supervised benchmark parts: two-view data, model, criteria, kNN evaluation.

What ``integrations/selfsupervised.py`` trains and measures, as library code:

* data: :func:`load_ssl_datasets` -- digits (embedded; batched tensor views by
  :class:`DigitsViews` as the DataLoader's ``collate_fn``) or CIFAR-10 (through
  :func:`harness.data.load_image_dataset`; lightly's ``SimCLRTransform`` views);
* model: :class:`SimCLR`, a backbone + lightly's ``SimCLRProjectionHead``;
* criteria: :func:`build_criterion` -- :class:`~hug_plugins.ssl.HUGCriterion`, lightly's
  ``NTXentLoss`` or ``HypersphereLoss`` by name, and :class:`TwoViewLoss` for the trainer;
* evaluation: :func:`evaluate_ssl` -- kNN top-1 (lightly's ``knn_predict``), GNC2 and NC4 on
  the L2-normalized backbone features;
* one run: :func:`run_ssl` trains one criterion with one seed and evaluates it (DDP-aware).

Example:
    >>> import torch
    >>> data = load_ssl_datasets("digits")
    >>> model = build_ssl_model("digits_cnn", width=4, proj_hidden=16, proj_dim=8)
    >>> views, labels = data.collate_fn([data.train[i] for i in range(4)])
    >>> loss = TwoViewLoss(build_criterion("hug", {}))(model, (views, labels))
    >>> bool(torch.isfinite(loss)), data.num_classes
    (True, 10)
"""

from harness.simclr.data import (
    DigitsViews,
    EvalDataset,
    SSLDatasets,
    TwoViewDataset,
    load_ssl_datasets,
)
from harness.simclr.model import (
    CRITERIA,
    CRITERION_NAMES,
    SSL_BACKBONES,
    SimCLR,
    TwoViewLoss,
    build_criterion,
    build_ssl_model,
    digits_cnn,
)
from harness.simclr.runs import (
    backbone_features,
    evaluate_ssl,
    images_per_run,
    per_process_batch,
    run_ssl,
    ssl_settings_tag,
)

__all__ = [
    "CRITERIA",
    "CRITERION_NAMES",
    "SSL_BACKBONES",
    "DigitsViews",
    "EvalDataset",
    "SSLDatasets",
    "SimCLR",
    "TwoViewDataset",
    "TwoViewLoss",
    "backbone_features",
    "build_criterion",
    "build_ssl_model",
    "digits_cnn",
    "evaluate_ssl",
    "images_per_run",
    "load_ssl_datasets",
    "per_process_batch",
    "run_ssl",
    "ssl_settings_tag",
]
