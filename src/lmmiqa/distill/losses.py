"""LEAF's joint distillation loss as pure functions of torch tensors (METHODS §3.2).

Every term is a *reliability-weighted mean* ``Σ wᵢ·ℓᵢ / Σ wᵢ`` over the judgments of a batch (0 when all weights
are 0), so weights set the relative influence of judgments without changing the loss scale:

* point-wise regression: ``ℓ = (s − t)²`` (student score vs. standardized teacher score);
* point-wise KL to the teacher's level distribution: ``ℓ = KL(q ‖ softmax(logits)) = Σ q·(log q − log p)``
  (``0·log 0 = 0``), through the student's K-way head;
* pair-wise fidelity loss (Tsai et al., "FRank: a ranking method with fidelity loss", SIGIR 2007):
  ``ℓ = 1 − √(p̂·p) − √((1 − p̂)(1 − p))`` between the student's P̂(A > B) and the teacher's P(A > B), with
  ``p̂ = Φ((s_A − s_B)/√2)`` (Thurstone) or ``sigmoid(s_A − s_B)`` (Bradley–Terry).

:func:`joint_loss` combines them with configurable weights. Torch is imported inside each function, so
importing this module stays light.
"""

from __future__ import annotations

import math
from typing import Any

PAIR_PROBABILITIES = ("thurstone", "sigmoid")
#: floor under the fidelity loss's square roots, so that its gradients stay finite at p = 0 and 1 (shifts the
#: loss by at most 2e-6)
FIDELITY_EPS = 1e-12


def weighted_mean(values: Any, weights: Any | None = None) -> Any:
    """``Σ w·v / Σ w`` (plain mean without weights); 0 for an empty batch or all-zero weights."""
    import torch

    if values.numel() == 0:
        return values.sum() * 0.0
    if weights is None:
        return values.mean()
    w = weights.to(values.dtype)
    total = w.sum()
    if float(total) <= 0.0:
        return (values * w).sum() * 0.0
    return (values * w).sum() / torch.clamp(total, min=torch.finfo(values.dtype).tiny)


def point_mse(pred: Any, target: Any, weights: Any | None = None) -> Any:
    """Reliability-weighted mean squared error between student scores and (standardized) teacher scores."""
    return weighted_mean((pred - target) ** 2, weights)


def level_kl(logits: Any, target_probs: Any, weights: Any | None = None) -> Any:
    """Reliability-weighted ``KL(target ‖ softmax(logits))`` per row (natural log), ``0·log 0 = 0``."""
    import torch

    logp = torch.log_softmax(logits, dim=-1)
    q = target_probs.to(logp.dtype)
    q = q / torch.clamp(q.sum(dim=-1, keepdim=True), min=torch.finfo(q.dtype).tiny)
    qlogq = torch.where(q > 0, q * torch.log(torch.clamp(q, min=torch.finfo(q.dtype).tiny)), torch.zeros_like(q))
    kl = (qlogq - q * logp).sum(dim=-1)
    return weighted_mean(kl, weights)


def pair_probability(score_a: Any, score_b: Any, kind: str = "thurstone") -> Any:
    """Student P(A better than B): ``Φ((s_A − s_B)/√2)`` (``thurstone``) or ``sigmoid(s_A − s_B)`` (``sigmoid``)."""
    import torch

    d = score_a - score_b
    if kind == "thurstone":
        return 0.5 * (1.0 + torch.erf(d / 2.0))  # Φ(d/√2) = ½(1 + erf(d/2))
    if kind == "sigmoid":
        return torch.sigmoid(d)
    from lmmiqa.errors import ConfigError

    raise ConfigError(f"unknown pair probability {kind!r}; known: {', '.join(PAIR_PROBABILITIES)}")


def fidelity(pred_prob: Any, target_prob: Any, weights: Any | None = None) -> Any:
    """Reliability-weighted fidelity loss ``1 − √(p̂p) − √((1 − p̂)(1 − p))`` (Tsai et al. 2007); 0 iff p̂ = p."""
    import torch

    p = pred_prob
    q = target_prob.to(p.dtype)
    loss = (1.0 - torch.sqrt(torch.clamp(p * q, min=FIDELITY_EPS))
            - torch.sqrt(torch.clamp((1.0 - p) * (1.0 - q), min=FIDELITY_EPS)))
    return weighted_mean(loss, weights)


def joint_loss(
    *,
    score: Any,
    target: Any,
    point_weights: Any | None = None,
    logits: Any | None = None,
    target_probs: Any | None = None,
    score_a: Any | None = None,
    score_b: Any | None = None,
    pair_target: Any | None = None,
    pair_weights: Any | None = None,
    w_point: float = 1.0,
    w_kl: float = 0.5,
    w_pair: float = 1.0,
    pair_kind: str = "thurstone",
) -> dict[str, Any]:
    """``w_point·MSE + w_kl·KL + w_pair·fidelity``; terms whose inputs are absent (or weight 0) are 0.

    Returns:
        ``{"loss": total, "point": …, "kl": …, "pair": …}`` (tensors; ``loss`` carries the gradient).
    """
    zero = score.sum() * 0.0
    point = point_mse(score, target, point_weights) if w_point and score.numel() else zero
    kl = level_kl(logits, target_probs, point_weights) if (w_kl and logits is not None and target_probs is not None) else zero
    if w_pair and score_a is not None and score_b is not None and pair_target is not None and score_a.numel():
        pair = fidelity(pair_probability(score_a, score_b, pair_kind), pair_target, pair_weights)
    else:
        pair = zero
    total = w_point * point + w_kl * kl + w_pair * pair
    return {"loss": total, "point": point, "kl": kl, "pair": pair}


def cosine_lr(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0, min_ratio: float = 0.01) -> float:
    """Learning rate at ``step``: linear warm-up to ``base_lr``, then cosine decay to ``min_ratio·base_lr``."""
    if total_steps <= 0:
        return float(base_lr)
    if warmup_steps > 0 and step < warmup_steps:
        return float(base_lr) * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, max(0.0, (step - warmup_steps) / span))
    return float(base_lr) * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t)))
