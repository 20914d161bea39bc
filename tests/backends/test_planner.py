"""Token-budget batching planner (pure): hand-computed groups, order, budgets and padding bounds."""

from __future__ import annotations

import random

import pytest

from lmmiqa.backends.planner import (
    bytes_per_token,
    default_max_batch_tokens,
    padding_stats,
    plan_batches,
)
from lmmiqa.errors import ConfigError


def _flat(groups: list[list[int]]) -> list[int]:
    return [i for g in groups for i in g]


def test_sorted_groups_cut_by_padding_ratio() -> None:
    # sorted desc: 1 (100), 3 (98), 2 (12), 0 (10)
    # [1, 3]: 2*100 = 200 <= 1.25*198; + 2: 3*100 = 300 > 1.25*210 = 262.5 -> cut
    # [2, 0]: 2*12 = 24 <= 1.25*22 = 27.5
    assert plan_batches([10, 100, 12, 98], 1000, max_batch=8) == [[1, 3], [2, 0]]


def test_budget_limits_padded_positions() -> None:
    # 100-token prompts, 250 padded positions -> two per forward
    assert plan_batches([100] * 5, 250, max_batch=8) == [[0, 1], [2, 3], [4]]
    # max_batch caps the count even when the budget would allow more
    assert plan_batches([100] * 5, 10_000, max_batch=2) == [[0, 1], [2, 3], [4]]


def test_prompt_over_budget_runs_alone() -> None:
    assert plan_batches([500, 10, 10], 100, max_batch=8) == [[0], [1, 2]]
    assert plan_batches([10, 500, 10, 501], 100, max_batch=8) == [[3], [1], [0, 2]]


def test_zero_budget_is_the_old_fixed_chunks_in_input_order() -> None:
    assert plan_batches([5, 1, 9, 3, 7], 0, max_batch=2) == [[0, 1], [2, 3], [4]]
    assert plan_batches([5, 1, 9], None, max_batch=8) == [[0, 1, 2]]
    assert plan_batches([], 100, max_batch=4) == []


def test_window_sorts_only_inside_each_window() -> None:
    # window [0, 1]: 1 (100) then 0 (10): 2*100 > 1.25*110 -> alone; the same in window [2, 3]
    assert plan_batches([10, 100, 10, 100], 10_000, max_batch=8, window=2) == [[1], [0], [3], [2]]
    # one window: the two 100s and the two 10s share forwards
    assert plan_batches([10, 100, 10, 100], 10_000, max_batch=8) == [[1, 3], [0, 2]]


def test_every_index_once_and_padding_bounded_on_random_runs() -> None:
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 60)
        lengths = [rng.choice([rng.randint(50, 300), rng.randint(700, 1100), rng.randint(5000, 12000)]) for _ in range(n)]
        budget = rng.choice([1000, 4000, 20000, 10**7])
        groups = plan_batches(lengths, budget, max_batch=rng.randint(1, 32), window=rng.choice([None, 8, 16]))
        assert sorted(_flat(groups)) == list(range(n))
        real, padded = padding_stats(lengths, groups)
        assert padded <= 1.25 * real
        for g in groups:
            longest = max(lengths[i] for i in g)
            assert len(g) == 1 or longest * len(g) <= budget


def test_padding_stats_hand_computed() -> None:
    assert padding_stats([10, 100, 12, 98], [[1, 3], [2, 0]]) == (220, 224)
    assert padding_stats([10, 100, 12, 98], [[0, 1, 2, 3]]) == (220, 400)


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="max_batch"):
        plan_batches([1], 10, max_batch=0)
    with pytest.raises(ConfigError, match="length"):
        plan_batches([0, 3], 10, max_batch=2)
    with pytest.raises(ConfigError, match="max_pad_ratio"):
        plan_batches([1], 10, max_batch=2, max_pad_ratio=0.9)


def test_bytes_per_token_and_default_budget() -> None:
    # Qwen3-VL-8B in bf16: text 4096/12288, vision 1152/4304, 2x2 merge
    per = bytes_per_token(4096, 12288, 2, vision_hidden=1152, vision_intermediate=4304, patches_per_token=4)
    assert per == 2 * ((6 * 4096 + 3 * 12288) + 4 * (6 * 1152 + 3 * 4304))  # 281,472 bytes
    assert default_max_batch_tokens(100 * 2**30, per) == int(0.5 * 100 * 2**30 // per)
    assert default_max_batch_tokens(0, per) == 1024
    assert bytes_per_token(64, 128, 4, kept_layers=3) == 4 * (6 * 64 + 3 * 128 + 3 * 64)


def test_cut_trades_padding_against_forward_overhead() -> None:
    # all four: 4*100 + 50 = 450; [100] + [80, 80, 80]: 100 + 50 + 240 + 50 = 440 (cheapest);
    # [100, 80] + [80, 80]: 200 + 50 + 160 + 50 = 460
    assert plan_batches([100, 80, 80, 80], 10**6, max_batch=8, forward_overhead=50) == [[0], [1, 2, 3]]
    # a forward costing 1024 positions is not worth 60 padded ones
    assert plan_batches([100, 80, 80, 80], 10**6, max_batch=8) == [[0, 1, 2, 3]]
    # no overhead: padding alone is minimised (equal lengths still share a forward at no cost)
    groups = plan_batches([100, 80, 80, 80], 10**6, max_batch=8, forward_overhead=0)
    assert padding_stats([100, 80, 80, 80], groups) == (340, 340)
