"""Checks a lean install (the wheel, no extras): the core trains, the adapters name their extra.

Run by ``.ci/run`` in a fresh virtual environment holding only the wheel and its required
dependencies, from outside the checkout (so the installed package is tested, not the sources).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

import torch

import hug_plugins
from hug_plugins import HUGLoss, ProxyHead

OPTIONAL = ("lightly", "avalanche", "faiss", "torchattacks", "lightning", "matplotlib",
            "torchvision", "omegaconf", "sklearn", "harness")  # fmt: skip

loaded = sorted({name.split(".")[0] for name in sys.modules} & set(OPTIONAL))
assert loaded == [], f"import hug_plugins loaded {loaded}"
assert hug_plugins.__file__ is not None and "site-packages" in hug_plugins.__file__, (
    hug_plugins.__file__
)
requires = importlib.metadata.requires("hug-plugins") or []
required = sorted(r.split(";")[0].split(">")[0].split("<")[0].split("=")[0].strip()
                  for r in requires if "extra ==" not in r)  # fmt: skip
assert required == ["numpy", "torch", "torchmetrics"], required

# A few training steps of a small model with HUGLoss + ProxyHead.
torch.manual_seed(0)
features = torch.randn(256, 10)
labels = (features[:, 0] > 0).long() + 2 * (features[:, 1] > 0).long()
backbone = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8))
head = ProxyHead(num_classes=4, dim=8)
loss_fn = HUGLoss()
optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.05, momentum=0.9)
losses = []
for _ in range(60):
    loss = loss_fn(backbone(features), labels, head.proxies)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(float(loss.detach()))
accuracy = float((head(backbone(features)).argmax(1) == labels).float().mean())
assert losses[-1] < losses[0] and accuracy > 0.6, (losses[0], losses[-1], accuracy)

# Every adapter names the extra that installs its framework.
for adapter, extra in [
    ("hug_plugins.ssl", "lightly"),
    ("hug_plugins.continual", "avalanche"),
    ("hug_plugins.robustness", "robustness"),
]:
    try:
        importlib.import_module(adapter)
    except ImportError as error:
        assert f"pip install 'hug-plugins[{extra}]'" in str(error), error
    else:
        raise AssertionError(f"{adapter} imported without its extra [{extra}]")

print(f"lean install OK: loss {losses[0]:.3f} -> {losses[-1]:.3f}, train accuracy {accuracy:.2f}")
