"""The local evaluate metric modules (neat.metrics): offline loading and hand-computed values."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from neat.metrics import METRIC_NAMES, load_metric, metric_path
from neat.stats import bootstrap_ci


@pytest.fixture
def offline(monkeypatch):
    """Hub offline by env, and any socket connection fails loudly."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("metric loading tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)


@pytest.fixture(scope="module")
def metrics():
    return {name: load_metric(name) for name in METRIC_NAMES}


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_every_metric_loads_offline_from_the_package(name, offline, tmp_path):
    import evaluate

    path = metric_path(name)
    assert (path / f"{name}.py").is_file()
    module = load_metric(name, cache_dir=tmp_path)
    assert isinstance(module, evaluate.Metric) and module.name == name
    assert set(module.features) and module.info.description
    by_file = evaluate.load(str(path / f"{name}.py"), keep_in_memory=True, cache_dir=str(tmp_path))
    assert type(by_file).__name__ == type(module).__name__


def test_unknown_metric_name():
    with pytest.raises(ValueError, match="available: pairwise_accuracy"):
        load_metric("accuracy")


def test_pairwise_accuracy_hand_computed(metrics):
    # win, tie, loss, tie -> (1 + 0.5 + 0 + 0.5) / 4
    out = metrics["pairwise_accuracy"].compute(chosen_scores=[1.0, 0.0, 2.0, 5.0], rejected_scores=[0.0, 0.0, 3.0, 5.0])
    assert out["pairwise_accuracy"] == 0.5 and out["n"] == 4
    assert 0.0 <= out["ci_low"] <= 0.5 <= out["ci_high"] <= 1.0
    perfect = metrics["pairwise_accuracy"].compute(chosen_scores=[2.0, 3.0], rejected_scores=[1.0, -1.0])
    assert (perfect["pairwise_accuracy"], perfect["ci_low"], perfect["ci_high"]) == (1.0, 1.0, 1.0)


def test_pairwise_accuracy_matches_stats_with_same_seed(metrics):
    rng = np.random.default_rng(0)
    c, r = rng.normal(size=50), rng.normal(size=50)
    out = metrics["pairwise_accuracy"].compute(chosen_scores=c.tolist(), rejected_scores=r.tolist(), seed=7)
    expected = bootstrap_ci((c > r).astype(float), seed=7)
    assert (out["pairwise_accuracy"], out["ci_low"], out["ci_high"]) == pytest.approx(expected)


def test_win_rate_hand_computed_with_ties(metrics):
    out = metrics["win_rate"].compute(scores_a=[1.0, 1.0, 0.0, 2.0, 3.0], scores_b=[0.0, 1.0, 1.0, 1.0, 3.0])
    assert (out["wins"], out["ties"], out["losses"], out["n"]) == (2, 2, 1, 5)
    assert out["win_rate"] == pytest.approx((2 + 0.5 * 2) / 5)
    assert out["ci_low"] <= out["win_rate"] <= out["ci_high"]


def test_win_rate_tie_tolerance_and_streaming(metrics):
    m = metrics["win_rate"]
    out = m.compute(scores_a=[1.0, 1.05, 0.0], scores_b=[0.0, 1.0, 1.0], tie_tolerance=0.1)
    assert (out["wins"], out["ties"], out["losses"]) == (1, 1, 1) and out["win_rate"] == 0.5
    m.add_batch(scores_a=[1.0], scores_b=[0.0])
    m.add_batch(scores_a=[0.0, 2.0], scores_b=[0.0, 3.0])
    assert m.compute()["win_rate"] == pytest.approx(1.5 / 3)


def test_win_rate_rejects_nan(metrics):
    with pytest.raises(ValueError, match="NaN"):
        metrics["win_rate"].compute(scores_a=[1.0, float("nan")], scores_b=[0.0, 0.0])


def test_refusal_rate_overall_and_by_label(metrics):
    m = metrics["refusal_rate"]
    out = m.compute(refused=[True, False, True, True, False], labels=["unsafe", "safe", "safe", "unsafe", "unsafe"])
    assert out["refusal_rate"] == pytest.approx(3 / 5) and out["n"] == 5
    assert out["unsafe_refusal_rate"] == pytest.approx(2 / 3) and out["n_unsafe"] == 3
    assert out["safe_compliance_rate"] == pytest.approx(1 / 2) and out["n_safe"] == 2
    for key in ("", "unsafe_refusal_rate_", "safe_compliance_rate_"):
        assert out[f"{key}ci_low"] <= out[f"{key}ci_high"]
    ints = m.compute(refused=[1, 0, 1, 1, 0])
    assert ints["refusal_rate"] == pytest.approx(3 / 5) and "unsafe_refusal_rate" not in ints


def test_refusal_rate_label_without_safe_prompts(metrics):
    out = metrics["refusal_rate"].compute(refused=[1, 1, 0, 1], labels=["unsafe"] * 4)
    assert out["unsafe_refusal_rate"] == 0.75
    assert out["safe_compliance_rate"] is None and out["n_safe"] == 0


def test_refusal_rate_rejects_bad_inputs(metrics):
    m = metrics["refusal_rate"]
    with pytest.raises(ValueError, match="expected 0/1"):
        m.compute(refused=[0, 2])
    with pytest.raises(ValueError, match="'safe' or 'unsafe'"):
        m.compute(refused=[0, 1], labels=["safe", "harmful"])
    with pytest.raises(ValueError, match="2 refused flags but 1 labels"):
        m.compute(refused=[0, 1], labels=["safe"])
