"""The HUG paper's reported numbers, for the benchmark tables to print beside their own.

Liu, Yu, Weller, Schölkopf. "Generalizing and Decoupling Neural Collapse via Hyperspherical
Uniformity Gap." ICLR 2023 (poster tables; ResNet-18 / VGG-16 / DenseNet-121, 200 epochs on a
GPU). Our CPU budgets differ: the jobs print these as a reference, never as a comparison of
equals.

Example:
    >>> PAPER_ERROR[("cifar100", "resnet18", "learnable")]
    23.5
"""

from __future__ import annotations

__all__ = ["PAPER_ERROR", "PAPER_ROBUST", "PAPER_TOP1", "paper_robust_rows"]

PAPER_ERROR = {
    ("cifar10", "resnet18", "ce"): 5.45,
    ("cifar100", "resnet18", "ce"): 24.90,
    ("cifar10", "resnet18", "learnable"): 5.03,
    ("cifar100", "resnet18", "learnable"): 23.50,
    ("cifar10", "resnet18", "static_random"): 5.19,
    ("cifar100", "resnet18", "static_random"): 24.23,
    ("cifar10", "resnet18", "static_optimized"): 5.12,
    ("cifar100", "resnet18", "static_optimized"): 24.02,
    ("cifar10", "resnet18", "partial"): 5.08,
    ("cifar100", "resnet18", "partial"): 23.89,
    ("cifar10", "vgg16", "ce"): 5.28,
    ("cifar100", "vgg16", "ce"): 22.99,
    ("cifar10", "vgg16", "learnable"): 5.19,
    ("cifar100", "vgg16", "learnable"): 22.77,
    ("cifar10", "densenet121", "ce"): 5.04,
    ("cifar100", "densenet121", "ce"): 21.47,
    ("cifar10", "densenet121", "learnable"): 4.85,
    ("cifar100", "densenet121", "learnable"): 21.30,
}
"""The poster's test errors (%) by (dataset, architecture, method); HUG = learnable in table 2."""

PAPER_TOP1 = {
    "cifar10": {
        "CE": (90.29, 87.85, 79.17, 74.11),
        "HUG": (90.41, 88.20, 79.88, 75.14),
    },
    "cifar100": {
        "CE": (66.74, 62.31, 48.79, 43.82),
        "HUG": (67.83, 63.33, 50.48, 45.63),
    },
}
"""Paper top-1 accuracy % at ratios 0.2, 0.1, 0.02, 0.01 (ResNet, LDAM construction)."""

PAPER_ROBUST = {
    "cifar10": {"CE": (7.94, 0.61, 0.0), "HUG": (15.24, 3.45, 1.76)},
    "cifar100": {"CE": (2.12, 0.0, 0.0), "HUG": (5.26, 1.24, 0.44)},
}
"""Paper PGD robust accuracy % at eps 2/255, 4/255, 8/255 (ResNet-18, no adversarial training)."""


def paper_robust_rows(dataset: str) -> list[dict[str, object]]:
    """The paper's robust accuracies of ``dataset`` as rows of the robustness table (none for a
    dataset the paper did not attack).

    Example:
        >>> paper_robust_rows("cifar10")[1]["robust@8/255"], paper_robust_rows("digits")
        (1.76, [])
    """
    return [
        {
            "method": method,
            "attack": "paper (ResNet-18, PGD-ce)",
            **{f"robust@{eps}/255": acc for eps, acc in zip((2, 4, 8), accs, strict=True)},
        }
        for method, accs in PAPER_ROBUST.get(dataset, {}).items()
    ]
