"""LEAF losses as pure functions, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from lmmiqa.distill.losses import (  # noqa: E402
    cosine_lr,
    fidelity,
    joint_loss,
    level_kl,
    pair_probability,
    point_mse,
    weighted_mean,
)
from lmmiqa.errors import ConfigError  # noqa: E402


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_weighted_mean_and_point_mse_hand_values():
    assert float(weighted_mean(t(1.0, 4.0))) == pytest.approx(2.5)
    assert float(weighted_mean(t(1.0, 4.0), t(1.0, 3.0))) == pytest.approx((1 + 12) / 4)
    assert float(weighted_mean(t(1.0, 4.0), t(0.0, 0.0))) == 0.0
    assert float(weighted_mean(t())) == 0.0
    # (1-0)^2 = 1 and (2-0)^2 = 4, weights 1 and 3 -> 13/4
    assert float(point_mse(t(1.0, 2.0), t(0.0, 0.0), t(1.0, 3.0))) == pytest.approx(3.25)


def test_level_kl_hand_values():
    logits = torch.zeros(2, 2, dtype=torch.float64)  # student: uniform over 2 levels
    # KL([1, 0] || [.5, .5]) = log 2 (0 log 0 = 0); KL([.5, .5] || [.5, .5]) = 0
    assert float(level_kl(logits[:1], t(1.0, 0.0)[None])) == pytest.approx(math.log(2))
    assert float(level_kl(logits[:1], t(0.5, 0.5)[None])) == pytest.approx(0.0, abs=1e-12)
    # weighted: (log 2 * 1 + 0 * 3) / 4
    targets = torch.stack([t(1.0, 0.0), t(0.5, 0.5)])
    assert float(level_kl(logits, targets, t(1.0, 3.0))) == pytest.approx(math.log(2) / 4)
    # unnormalized targets are normalized: [2, 0] == [1, 0]
    assert float(level_kl(logits[:1], t(2.0, 0.0)[None])) == pytest.approx(math.log(2))


def test_pair_probability_hand_values():
    # Thurstone: Φ(Δ/√2); Δ = √2 -> Φ(1) = 0.841344746...
    p = pair_probability(t(math.sqrt(2), 0.0), t(0.0, 0.0))
    assert float(p[0]) == pytest.approx(0.8413447460685429)
    assert float(p[1]) == pytest.approx(0.5)
    assert float(pair_probability(t(1.0), t(0.0), "sigmoid")[0]) == pytest.approx(1 / (1 + math.exp(-1)))
    with pytest.raises(ConfigError, match="thurstone, sigmoid"):
        pair_probability(t(1.0), t(0.0), "probit")


def test_fidelity_hand_values_and_finite_gradients():
    # equal -> 0; opposite certainties -> 1; p̂ = 0.5 vs 1 -> 1 - sqrt(0.5)
    assert float(fidelity(t(0.3), t(0.3))) == pytest.approx(0.0, abs=1e-6)
    assert float(fidelity(t(1.0), t(0.0))) == pytest.approx(1.0, abs=1e-5)
    assert float(fidelity(t(0.5), t(1.0))) == pytest.approx(1 - math.sqrt(0.5), abs=1e-6)
    assert float(fidelity(t(0.5, 0.3), t(1.0, 0.3), t(1.0, 1.0))) == pytest.approx((1 - math.sqrt(0.5)) / 2, abs=1e-6)
    p = t(0.0, 1.0).requires_grad_()
    fidelity(p, t(1.0, 0.0)).backward()
    assert torch.isfinite(p.grad).all()


def test_joint_loss_combines_weighted_terms():
    score = t(1.0, 0.0).requires_grad_()
    out = joint_loss(
        score=score, target=t(0.0, 0.0),
        logits=torch.zeros(2, 2, dtype=torch.float64), target_probs=torch.stack([t(1.0, 0.0), t(1.0, 0.0)]),
        score_a=score[:1], score_b=score[1:], pair_target=t(0.5),
        w_point=1.0, w_kl=0.5, w_pair=2.0,
    )
    point = 0.5  # (1 + 0) / 2
    kl = math.log(2)
    p_hat = 0.5 * (1 + math.erf(1 / 2))  # Φ(1/√2)
    pair = 1 - math.sqrt(p_hat * 0.5) - math.sqrt((1 - p_hat) * 0.5)
    value = {k: float(v.detach()) for k, v in out.items()}
    assert value["point"] == pytest.approx(point)
    assert value["kl"] == pytest.approx(kl)
    assert value["pair"] == pytest.approx(pair, abs=1e-5)
    assert value["loss"] == pytest.approx(point + 0.5 * kl + 2.0 * pair, abs=1e-5)
    out["loss"].backward()
    assert score.grad is not None


def test_joint_loss_absent_terms_are_zero():
    out = joint_loss(score=t(1.0), target=t(0.0))
    assert float(out["kl"]) == 0.0 and float(out["pair"]) == 0.0 and float(out["loss"]) == pytest.approx(1.0)


def test_cosine_lr_schedule():
    assert cosine_lr(0, 100, 1.0, warmup_steps=10) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 1.0, warmup_steps=10) == pytest.approx(1.0)
    assert cosine_lr(10, 100, 1.0, warmup_steps=10) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 1.0, warmup_steps=10, min_ratio=0.0) == pytest.approx(0.5)
    assert cosine_lr(100, 100, 1.0, min_ratio=0.01) == pytest.approx(0.01)
    assert cosine_lr(5, 0, 0.3) == 0.3
