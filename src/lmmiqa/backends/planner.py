"""Token-budget batching: which prompts share one forward pass (pure functions, no torch).

A scoring forward costs memory in proportion to its *padded* positions: ``batch size × longest prompt`` (prompts
are left-padded to the longest of their batch). Fixed-size chunks in input order waste most of that on padding
when prompt lengths differ (LLM-IQA mixes whole images with small crops; a 4000×3000 photo is 10k+ image tokens
next to a 200-token crop). :func:`plan_batches` sorts the prompts of a window by length and cuts the sorted list
into groups (forwards) so that

* a group's padded positions (``len(group) × its longest prompt``) stay within ``max_tokens`` (a prompt longer
  than the budget runs alone);
* a group has at most ``max_batch`` prompts;
* a group's padded positions are at most ``max_pad_ratio`` × its real positions, so the whole run stays within
  that ratio even when the budget would allow one big, badly padded forward;

and, among such cuts, the total ``padded positions + forward_overhead × forwards`` is smallest (an exact
dynamic programme over the sorted lengths, O(n · max_batch)): a forward is split where that saves more padding
than the fixed cost of one more forward, counted as ``forward_overhead`` positions (default 1024).

Callers run the groups in the order given and put each result back at its input index.

:func:`bytes_per_token` and :func:`default_max_batch_tokens` give the default budget from the model config and
the free memory of the device (see their docstrings for the formula).
"""

from __future__ import annotations

from collections.abc import Sequence

from lmmiqa.errors import ConfigError

__all__ = [
    "DEFAULT_FORWARD_OVERHEAD",
    "DEFAULT_MAX_PAD_RATIO",
    "MEMORY_FRACTION",
    "bytes_per_token",
    "default_max_batch_tokens",
    "padding_stats",
    "plan_batches",
]

#: Padded positions allowed per real position in one group (and so over a run).
DEFAULT_MAX_PAD_RATIO = 1.25
#: The fixed cost of one more forward, in token positions, traded against padding by :func:`plan_batches`.
DEFAULT_FORWARD_OVERHEAD = 1024
#: Share of the free device memory the default token budget may use for activations.
MEMORY_FRACTION = 0.5


def plan_batches(
    lengths: Sequence[int],
    max_tokens: int | None,
    *,
    max_batch: int,
    window: int | None = None,
    max_pad_ratio: float = DEFAULT_MAX_PAD_RATIO,
    forward_overhead: int = DEFAULT_FORWARD_OVERHEAD,
) -> list[list[int]]:
    """Group prompt indices into forwards by a token budget.

    Args:
        lengths: tokens of each prompt (text + image tokens), in input order; each >= 1.
        max_tokens: largest ``len(group) × max(lengths in group)``; ``0`` or ``None`` turns token budgeting off
            and gives the old fixed-size chunks of ``max_batch`` prompts in input order.
        max_batch: most prompts per group (>= 1).
        window: sort within consecutive windows of this many prompts (``None``: the whole call).
        max_pad_ratio: most padded positions per real position within a group (>= 1).
        forward_overhead: the cost of one more forward in positions (>= 0); 0 minimises padding alone.

    Returns:
        Lists of input indices; every index appears exactly once. Within a window the groups go from the longest
        prompts to the shortest (a memory error shows on the first forward, not the last).

    Raises:
        ConfigError: a length < 1 or an argument out of range.
    """
    n = len(lengths)
    if int(max_batch) < 1:
        raise ConfigError(f"max_batch must be >= 1, got {max_batch}")
    if max_pad_ratio < 1:
        raise ConfigError(f"max_pad_ratio must be >= 1, got {max_pad_ratio}")
    if window is not None and int(window) < 1:
        raise ConfigError(f"window must be >= 1 or None, got {window}")
    if int(forward_overhead) < 0:
        raise ConfigError(f"forward_overhead must be >= 0, got {forward_overhead}")
    if max_tokens is not None and int(max_tokens) < 0:
        raise ConfigError(f"max_tokens must be >= 0 (0: off), got {max_tokens}")
    lens = [int(x) for x in lengths]
    if any(x < 1 for x in lens):
        raise ConfigError(f"every prompt length must be >= 1, got {min(lens)}")
    mb = int(max_batch)
    if not max_tokens:
        return [list(range(i, min(i + mb, n))) for i in range(0, n, mb)]
    budget = int(max_tokens)
    step = int(window) if window else max(n, 1)
    groups: list[list[int]] = []
    for w0 in range(0, n, step):
        order = sorted(range(w0, min(n, w0 + step)), key=lambda i: (-lens[i], i))
        groups.extend(_cut(order, lens, budget, mb, max_pad_ratio, int(forward_overhead)))
    return groups


def _cut(order: list[int], lens: list[int], budget: int, mb: int, ratio: float, overhead: int) -> list[list[int]]:
    """The cheapest valid cut of ``order`` (sorted by decreasing length) into contiguous groups."""
    n = len(order)
    inf = float("inf")
    best = [0.0] + [inf] * n  # best[j]: cost of the first j prompts
    start = [0] * (n + 1)
    for j in range(1, n + 1):
        real = 0
        for i in range(j - 1, max(-1, j - 1 - mb), -1):  # group order[i:j]; its longest is order[i]
            real += lens[order[i]]
            size = j - i
            padded = lens[order[i]] * size
            if size > 1 and (padded > budget or padded > ratio * real):
                if padded > budget:
                    break  # longer groups only get worse
                continue
            cost = best[i] + padded + overhead
            if cost < best[j]:
                best[j], start[j] = cost, i
    out: list[list[int]] = []
    j = n
    while j > 0:
        out.append(order[start[j] : j])
        j = start[j]
    return out[::-1]


def padding_stats(lengths: Sequence[int], groups: Sequence[Sequence[int]]) -> tuple[int, int]:
    """(real positions, padded positions) of running ``groups`` over prompts of ``lengths``."""
    real = sum(int(lengths[i]) for g in groups for i in g)
    padded = sum(len(g) * max(int(lengths[i]) for i in g) for g in groups if g)
    return real, padded


def bytes_per_token(
    hidden: int,
    intermediate: int,
    dtype_bytes: int,
    *,
    vision_hidden: int = 0,
    vision_intermediate: int = 0,
    patches_per_token: int = 4,
    kept_layers: int = 0,
) -> int:
    """Activation bytes one position needs during a forward without a KV cache (a documented estimate).

    ``dtype_bytes × [(6·H + 3·I) + m·(6·Hv + 3·Iv) + L·H]``: per text layer the residual stream, the norm output,
    q, attention output, o-projection and k/v (≈ 6·H) and the MLP's gate, up and product (3·I); the vision
    tower's layers on the ``m`` patches merged into one token (Qwen-VL: 2×2 = 4), counted for every position to
    stay on the safe side; ``L·H`` when ``L`` layers' hidden states are kept (``output_hidden_states``). Only one
    layer's transients are alive at a time under ``inference_mode`` without a cache. Attention scores are not
    counted: SDPA/flash kernels do not materialise them; the eager kernel needs ``heads × length²`` more.
    """
    text = 6 * int(hidden) + 3 * int(intermediate)
    vision = int(patches_per_token) * (6 * int(vision_hidden) + 3 * int(vision_intermediate))
    return int(dtype_bytes) * (text + vision + int(kept_layers) * int(hidden))


def default_max_batch_tokens(free_bytes: int, per_token: int, *, fraction: float = MEMORY_FRACTION, floor: int = 1024) -> int:
    """The default token budget: ``max(floor, fraction × free_bytes / per_token)``.

    Args:
        free_bytes: free device memory after the weights are loaded (CUDA: ``torch.cuda.mem_get_info``; CPU:
            the available RAM).
        per_token: :func:`bytes_per_token` of the model.
        fraction: share of the free memory for activations (the rest: logits, processor outputs, allocator
            fragmentation).
        floor: smallest budget returned (a prompt over the budget still runs, alone).
    """
    if per_token <= 0:
        raise ConfigError(f"per_token must be > 0, got {per_token}")
    return max(int(floor), int(fraction * max(int(free_bytes), 0) // int(per_token)))
