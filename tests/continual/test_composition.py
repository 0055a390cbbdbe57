"""HUGPlugin composed as Avalanche's docs compose plugins, with Avalanche's strategies and loggers.

Also checks that the adapter writes no private attribute of an Avalanche object.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

pytest.importorskip("avalanche")

from avalanche.benchmarks import nc_benchmark
from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
from avalanche.logging import TensorboardLogger, TextLogger
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from avalanche.training.storage_policy import ClassBalancedBuffer
from avalanche.training.supervised import ER_ACE, EWC, GDumb, LwF, Naive
from torch.utils.data import TensorDataset

from hug_plugins.continual import HUGPlugin, NeuralCollapsePluginMetric

NUM_CLASSES, DIM, FEATURES = 6, 8, 16
PACKAGE = Path(__file__).resolve().parents[2] / "hug_plugins"


def _split(n_per_class: int, seed: int) -> TensorDataset:
    centres = torch.randn(NUM_CLASSES, DIM, generator=torch.Generator().manual_seed(100)) * 3.0
    y = torch.arange(NUM_CLASSES).repeat(n_per_class)
    x = centres[y] + torch.randn(len(y), DIM, generator=torch.Generator().manual_seed(seed))
    data = TensorDataset(x, y)
    data.targets = y.tolist()  # type: ignore[attr-defined]
    return data


@pytest.fixture(scope="module")
def benchmark() -> Any:
    return nc_benchmark(_split(30, 1), _split(10, 2), n_experiences=3, task_labels=False, seed=0)


def _model(head: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, FEATURES), head)


STRATEGIES = {
    "Naive": lambda m, o, c: Naive(
        model=m,
        optimizer=o,
        criterion=c,
        train_mb_size=16,
        plugins=[ReplayPlugin(mem_size=30)],
        **QUIET,
    ),
    "ER_ACE": lambda m, o, c: ER_ACE(
        model=m, optimizer=o, criterion=c, mem_size=30, train_mb_size=16, **QUIET
    ),
    "LwF": lambda m, o, c: LwF(
        model=m, optimizer=o, criterion=c, alpha=1.0, temperature=2.0, train_mb_size=16, **QUIET
    ),
    "EWC": lambda m, o, c: EWC(
        model=m, optimizer=o, criterion=c, ewc_lambda=1.0, train_mb_size=16, **QUIET
    ),
    "GDumb": lambda m, o, c: GDumb(
        model=m, optimizer=o, criterion=c, mem_size=30, train_mb_size=16, **QUIET
    ),
}
QUIET: dict[str, Any] = {"evaluator": EvaluationPlugin(loggers=[])}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_hug_plugin_as_the_criterion_of_avalanche_strategies(name: str, benchmark: Any) -> None:
    plugin = HUGPlugin(NUM_CLASSES, FEATURES)
    model = _model(plugin.head)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    QUIET["evaluator"] = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])
    strategy = STRATEGIES[name](model, optimizer, plugin)
    assert plugin in strategy.plugins
    for experience in benchmark.train_stream[:2]:
        strategy.train(experience, eval_streams=[])
    metrics = strategy.eval(benchmark.test_stream[:2])
    assert plugin._calls > 0  # the strategy's loss was HUG's
    accuracy = metrics["Top1_Acc_Stream/eval_phase/test_stream/Task000"]
    assert 0.0 <= accuracy <= 1.0
    # The model still predicts with the plugin's head (GDumb trains a copy of it).
    assert any(module is plugin.head for module in strategy.model.modules())


def test_readme_composition_with_text_and_tensorboard_loggers(
    benchmark: Any, tmp_path: Path
) -> None:
    plugin = HUGPlugin(NUM_CLASSES, FEATURES)
    model = _model(plugin.head)
    log = tmp_path / "log.txt"
    with open(log, "w", encoding="utf-8") as text:
        evaluator = EvaluationPlugin(
            accuracy_metrics(experience=True, stream=True),
            loss_metrics(stream=True),
            NeuralCollapsePluginMetric(NUM_CLASSES),
            loggers=[TextLogger(text), TensorboardLogger(tmp_path / "tb")],
        )
        strategy = Naive(
            model,
            torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
            criterion=plugin,
            train_mb_size=16,
            plugins=[ReplayPlugin(mem_size=30, storage_policy=ClassBalancedBuffer(30, True))],
            evaluator=evaluator,
        )
        for experience in benchmark.train_stream:
            strategy.train(experience, eval_streams=[])
            results = strategy.eval(benchmark.test_stream)
    written = log.read_text(encoding="utf-8")
    for key in ("nc1", "gnc2_ratio", "nc3_dist", "nc4_mismatch"):
        assert f"NC/{key}/eval_phase/test_stream/Exp000" in written
        assert f"NC/{key}/eval_phase/test_stream/Exp002" in results
    assert any((tmp_path / "tb").rglob("events.out.tfevents.*"))
    nc1 = results["NC/nc1/eval_phase/test_stream/Exp000"]
    assert nc1 == nc1 and nc1 >= 0.0  # a real number, not NaN


def _private_writes(path: Path) -> list[str]:
    """Assignments (``x._a = ...``, ``setattr(x, "_a", ...)``) to another object's private
    attributes; ``self`` and module-local objects the file creates are its own business."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        for target in targets:
            if (
                isinstance(target, ast.Attribute)
                and target.attr.startswith("_")
                and not target.attr.endswith("__")
                and not (isinstance(target.value, ast.Name) and target.value.id == "self")
            ):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(target)}")
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "setattr"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and str(node.args[1].value).startswith("_")
        ):
            found.append(f"{path.name}:{node.lineno}: setattr(..., {node.args[1].value!r})")
    return found


def test_no_private_attribute_of_a_framework_object_is_written() -> None:
    offenders = [w for path in sorted(PACKAGE.rglob("*.py")) for w in _private_writes(path)]
    assert offenders == []
    assert "strategy._" not in "".join(
        p.read_text(encoding="utf-8") for p in (PACKAGE / "continual").glob("*.py")
    )
