"""Tests of the Avalanche adapter :mod:`hug_plugins.continual`."""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

pytest.importorskip("avalanche")

from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
from avalanche.training.plugins import EvaluationPlugin, SupervisedPlugin
from avalanche.training.supervised import Naive
from harness.continual.streams import (
    class_incremental_tensors,
    load_strategy_checkpoint,
    save_strategy_checkpoint,
)

from hug_plugins import HUGPlugin as LazyHUGPlugin
from hug_plugins.continual import HUGPlugin, ReplayMemoryPlugin
from hug_plugins.losses import HUGLoss, preset_config

NUM_CLASSES = 6
DIM = 8
FEATURES = 16
ACC_KEY = "Top1_Acc_Stream/eval_phase/test_stream"


def _blobs(n_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(100)
    centres = torch.randn(NUM_CLASSES, DIM, generator=gen) * 3.0
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(NUM_CLASSES).repeat(n_per_class)
    x = centres[y] + torch.randn(len(y), DIM, generator=gen)
    return x, y


@pytest.fixture(scope="module")
def benchmark() -> Any:
    return class_incremental_tensors(_blobs(40, 1), _blobs(20, 2), num_experiences=3, seed=0)


def _plugin(**kwargs: Any) -> HUGPlugin:
    return HUGPlugin(NUM_CLASSES, FEATURES, preset_config("mhe", alpha=1.0, beta=1.0), **kwargs)


def _model(head: nn.Module, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, FEATURES), head)


def _strategy(
    model: nn.Module,
    plugins: list[Any],
    epochs: int = 4,
    evaluator: Any = None,
    criterion: Any = None,
) -> Naive:
    """Naive with the HUGPlugin in ``plugins`` as its criterion (Avalanche's composition)."""
    if criterion is None:
        criterion = next((p for p in plugins if isinstance(p, HUGPlugin)), nn.CrossEntropyLoss())
    return Naive(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        criterion=criterion,
        train_mb_size=16,
        train_epochs=epochs,
        eval_mb_size=64,
        plugins=[p for p in plugins if p is not criterion],
        evaluator=evaluator if evaluator is not None else EvaluationPlugin(loggers=[]),
    )


def _replay(mem_size: int = 30, **kwargs: Any) -> ReplayMemoryPlugin:
    return ReplayMemoryPlugin(mem_size=mem_size, **kwargs)


class _Probe(SupervisedPlugin):  # type: ignore[misc]
    """Records the loss, inputs and labels of every training minibatch before backward."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[float, torch.Tensor, torch.Tensor, float]] = []

    def before_backward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        model = strategy.model
        plugin = HUGPlugin.of(strategy)
        with torch.no_grad():
            features = model[:-1](strategy.mb_x)
            expected = plugin.loss_fn(features, strategy.mb_y, plugin.head.proxies)
        self.records.append(
            (
                float(strategy.loss.detach()),
                strategy.mb_x.clone(),
                strategy.mb_y.clone(),
                float(expected),
            )
        )


def test_lazy_export() -> None:
    assert LazyHUGPlugin is HUGPlugin


def test_naive_runs_three_experiences_with_replay_in_every_batch(benchmark: Any) -> None:
    plugin = _plugin()
    probe = _Probe()
    strategy = _strategy(_model(plugin.head), [plugin, _replay(), probe], epochs=1)
    assert plugin in strategy.plugins  # Avalanche adds a criterion that is a plugin itself
    seen: set[int] = set()
    for index, experience in enumerate(benchmark.train_stream):
        start = len(probe.records)
        strategy.train(experience, eval_streams=[])
        current = set(experience.classes_in_this_experience)
        for _, _, labels, _ in probe.records[start:]:
            classes = set(labels.tolist())
            if index > 0:  # every minibatch mixes current and replayed (old-class) samples
                assert classes & current and classes & seen
            assert classes <= current | seen
        seen |= current
    assert strategy.clock.train_exp_counter == 3
    assert all(torch.isfinite(torch.tensor(r[0])) for r in probe.records)
    assert len(plugin.head._forward_pre_hooks) == 0  # the hook lives only while training


def test_strategy_loss_equals_core_hug_loss(benchmark: Any) -> None:
    plugin = _plugin()
    probe = _Probe()
    strategy = _strategy(_model(plugin.head), [plugin, _replay(), probe], epochs=1)
    strategy.train(benchmark.train_stream[:2], eval_streams=[])
    assert len(probe.records) > 4
    for loss, _, _, expected in probe.records:
        assert loss == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_loss_on_equals_core_loss_and_the_hybrid_equals_hug_loss_with_ce() -> None:
    config = preset_config("mhe")
    plugin = HUGPlugin(NUM_CLASSES, FEATURES, config, proxy_mode="learnable")
    features = torch.randn(12, FEATURES)
    labels = torch.arange(NUM_CLASSES).repeat(2)
    core = HUGLoss(config)(features, labels, plugin.head.proxies)
    assert torch.equal(plugin.loss_on(features, labels), core)
    hybrid = HUGPlugin(NUM_CLASSES, FEATURES, config, proxy_mode="learnable", ce_weight=0.5)
    hybrid.head.load_state_dict(plugin.head.state_dict())
    # The CE term is on the head's own logits (the same logit scale).
    ce = nn.functional.cross_entropy(hybrid.head(features), labels)
    torch.testing.assert_close(hybrid.loss_on(features, labels), core + 0.5 * ce)


@pytest.mark.parametrize("policy", ["class_balanced", "reservoir", "experience_balanced"])
def test_buffer_respects_mem_size_and_class_balance(benchmark: Any, policy: str) -> None:
    plugin, replay = _plugin(), _replay(30, storage_policy=policy)
    strategy = _strategy(_model(plugin.head), [plugin, replay], epochs=1)
    seen: set[int] = set()
    for experience in benchmark.train_stream:
        strategy.train(experience, eval_streams=[])
        seen |= set(experience.classes_in_this_experience)
        buffer = replay.storage_policy.buffer
        counts = Counter(int(t) for t in buffer.targets)
        assert len(buffer) == 30
        assert set(counts) <= seen
        if policy == "class_balanced":
            assert set(counts) == seen
            assert max(counts.values()) - min(counts.values()) <= 1


def test_ce_replay_baseline_without_task_labels_does_not_crash(benchmark: Any) -> None:
    """ClassBalancedBuffer + data without task labels crashed on the 2nd experience (trap 1)."""
    assert "targets_task_labels" not in benchmark.train_stream[0].dataset._data_attributes
    replay = ReplayMemoryPlugin(mem_size=30)
    strategy = _strategy(_model(nn.Linear(FEATURES, NUM_CLASSES)), [replay], epochs=1)
    strategy.train(benchmark.train_stream, eval_streams=[])
    assert len(replay.storage_policy.buffer) == 30


def test_warning_filters_are_left_alone(benchmark: Any) -> None:
    """ReplayPlugin's deprecated buffer update ran warnings.simplefilter (trap 2)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        before = list(warnings.filters)
        plugin = _plugin()
        strategy = _strategy(_model(plugin.head), [plugin, _replay()], epochs=1)
        strategy.train(benchmark.train_stream[:2], eval_streams=[])
        assert warnings.filters == before


def test_accuracy_metrics_see_nearest_proxy_predictions(benchmark: Any) -> None:
    plugin = _plugin()
    evaluator = EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        forgetting_metrics(experience=True, stream=True),
        loggers=[],
    )
    model = _model(plugin.head)
    strategy = _strategy(model, [plugin, _replay(60)], epochs=8, evaluator=evaluator)
    for experience in benchmark.train_stream:
        strategy.train(experience, eval_streams=[])
    metrics = strategy.eval(benchmark.test_stream)
    batches = [next(iter(DataLoader(e.dataset, batch_size=10_000))) for e in benchmark.test_stream]
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    model.eval()
    with torch.no_grad():
        predictions = plugin.head.predict(model[:-1](x))
    manual = float((predictions == y).float().mean())
    assert metrics[ACC_KEY] == pytest.approx(manual, abs=1e-6)
    # The equality above is only informative if the predictions are neither constant nor
    # chance: chance is 1/6. The margin holds on every BLAS path: over model seeds 0-3 with
    # MKL_CBWR unset / COMPATIBLE / AVX2 this toy run gave 0.65-0.83 (a bimodal toy: one
    # class is sometimes lost entirely), so the bound sits two whole classes below the lowest.
    assert manual > 1 / 3
    assert len(predictions.unique()) >= 4
    assert "StreamForgetting/eval_phase/test_stream" in metrics


def test_learnable_proxies_stay_apart(benchmark: Any) -> None:
    plugin = _plugin(proxy_mode="learnable", ce_weight=0.5)
    start = plugin.head.normalized_proxies().detach().clone()
    model = _model(plugin.head)
    strategy = _strategy(model, [plugin, _replay()], epochs=2)
    strategy.train(benchmark.train_stream, eval_streams=[])
    proxies = plugin.head.normalized_proxies().detach()
    assert not torch.allclose(proxies, start)
    distances = torch.cdist(proxies, proxies) + 10 * torch.eye(NUM_CLASSES)
    assert float(distances.min()) > 1.0  # unseen-class proxies never collapsed onto seen ones


def test_head_must_be_in_model(benchmark: Any) -> None:
    plugin = _plugin()
    strategy = _strategy(_model(nn.Linear(FEATURES, NUM_CLASSES)), [plugin], epochs=1)
    with pytest.raises(ValueError, match="not part of the strategy's model"):
        strategy.train(benchmark.train_stream[0], eval_streams=[])


def test_plugin_that_is_not_the_criterion_says_so(benchmark: Any) -> None:
    plugin = _plugin()
    strategy = _strategy(_model(plugin.head), [plugin], epochs=1, criterion=nn.CrossEntropyLoss())
    with pytest.raises(RuntimeError, match="criterion=plugin"):
        strategy.train(benchmark.train_stream[0], eval_streams=[])


def test_defaults_use_the_calibrated_recipe_with_the_heads_scale() -> None:
    import inspect

    from hug_plugins.losses import HUGConfig

    plugin = HUGPlugin(NUM_CLASSES, FEATURES, logit_scale=10.0)
    assert plugin.loss_fn.config == replace(HUGConfig(), logit_scale=10.0)
    assert plugin.head.scale == 10.0 and plugin.head.mode == "static_optimized"
    named = HUGPlugin(NUM_CLASSES, FEATURES, "mhe_sum")
    assert named.loss_fn.config == preset_config("mhe_sum")
    with pytest.raises(ValueError, match="logit_scale"):
        HUGPlugin(NUM_CLASSES, FEATURES, ce_weight=1.0, logit_scale=0.0)
    # One vocabulary: the same keyword-only HUG arguments as HUGLoss, shown by help().
    keywords = {
        name
        for name, p in inspect.signature(HUGPlugin).parameters.items()
        if p.kind is p.KEYWORD_ONLY
    }
    loss_keywords = set(inspect.signature(HUGLoss).parameters) - {"config"}
    assert loss_keywords <= keywords and {"proxy_mode", "seed"} <= keywords


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        HUGPlugin(1, 4)
    with pytest.raises(ValueError, match="storage policy"):
        ReplayMemoryPlugin(3, storage_policy="fifo")
    with pytest.raises(ValueError, match="ce_weight"):
        HUGPlugin(3, 4, ce_weight=-1.0)
    with pytest.raises(ValueError, match="unknown HUG argument"):
        HUGPlugin(3, 4, mem_size=200)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="no submodule"):
        HUGPlugin(3, 4).attach(nn.Sequential(nn.Linear(2, 4)), "head")


def _state(strategy: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in strategy.model.state_dict().items()}


def test_checkpoint_round_trip_resumes_with_the_same_state(benchmark: Any, tmp_path: Path) -> None:
    def build(seed: int) -> Naive:
        plugin = _plugin(proxy_mode="learnable")
        evaluator = EvaluationPlugin(accuracy_metrics(stream=True), loggers=[])
        model = _model(plugin.head, seed=seed)
        return _strategy(model, [plugin, _replay()], epochs=2, evaluator=evaluator)

    def buffer_of(strategy: Any) -> list[int]:
        replay = next(p for p in strategy.plugins if isinstance(p, ReplayMemoryPlugin))
        return [int(t) for t in replay.storage_policy.buffer.targets]

    torch.manual_seed(123)
    first = build(seed=0)
    first.train(benchmark.train_stream[0], eval_streams=[])
    path = save_strategy_checkpoint(first, tmp_path / "ckpt.pkl")
    saved_model = _state(first)
    saved_buffer = buffer_of(first)
    first.train(benchmark.train_stream[1], eval_streams=[])  # the uninterrupted run

    second = build(seed=7)  # a different init, replaced by the checkpoint
    second, next_exp = load_strategy_checkpoint(second, path)
    assert next_exp == 1
    for key, value in _state(second).items():
        assert torch.equal(value, saved_model[key])
    plugin = HUGPlugin.of(second)
    assert plugin.head is second.model[-1]
    assert buffer_of(second) == saved_buffer
    opt_params = [p for g in second.optimizer.param_groups for p in g["params"]]
    assert {id(p) for p in opt_params} == {id(p) for p in second.model.parameters()}
    assert all("momentum_buffer" in second.optimizer.state[p] for p in opt_params)
    second.train(benchmark.train_stream[next_exp], eval_streams=[])  # resumed run
    for key, value in _state(second).items():
        torch.testing.assert_close(value, first.model.state_dict()[key], rtol=0, atol=0)
    assert second.clock.train_exp_counter == first.clock.train_exp_counter == 2


def test_missing_checkpoint_is_a_fresh_start(tmp_path: Path) -> None:
    sentinel = object()
    assert load_strategy_checkpoint(sentinel, tmp_path / "none.pkl") == (sentinel, 0)


def test_default_static_proxies_skip_the_inter_term_after_the_first_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hug_plugins.functional import hug as functional_hug

    calls: list[int] = []
    original = functional_hug.inter_term

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(functional_hug, "inter_term", counting)
    plugin = HUGPlugin(num_classes=10, feature_dim=16)
    assert plugin.head.mode == "static_optimized" and not plugin.head.proxies.requires_grad
    features = torch.randn(32, 16, requires_grad=True)
    labels = torch.randint(0, 10, (32,))
    for _ in range(4):
        plugin.loss_fn(features, labels, plugin.head.proxies).backward()
    assert len(calls) == 1  # a constant: computed once, then O(B d) steps
    assert features.grad is not None and bool(torch.isfinite(features.grad).all())
