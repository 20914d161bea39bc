"""The torch parts of Q-Scorer (METHODS §4): the regression head, the network that reads it, position helpers.

Private and imported lazily by :mod:`lmmiqa.training.q_scorer_model` and :mod:`lmmiqa.training.q_scorer`
(it imports torch at module level; ``import lmmiqa`` never reaches it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lmmiqa.errors import BackendError, ConfigError

_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def build_head(hidden_size: int, dims: Sequence[int], activation: str, dropout: float) -> nn.Sequential:
    """The MLP head ``hidden -> dims[0] -> ... -> 1`` (reference: 2048, 1024 with ReLU), in float32.

    Weights come from torch's default initialisation (the global RNG: seed it for reproducible runs).
    """
    if activation not in _ACTIVATIONS:
        raise ConfigError(f"unknown head activation {activation!r}; known: {', '.join(_ACTIVATIONS)}")
    layers: list[nn.Module] = []
    width = int(hidden_size)
    for d in dims:
        layers.append(nn.Linear(width, int(d)))
        layers.append(_ACTIVATIONS[activation]())
        if dropout > 0:
            layers.append(nn.Dropout(float(dropout)))
        width = int(d)
    layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers).float()


def score_positions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, score_ids: torch.Tensor) -> torch.Tensor:
    """Per row, the position whose next-token prediction is the score token.

    Rows that contain a score token (training: the answer ends in ``<scoreX>``) give the position right before
    its (single) occurrence; rows without one (inference: the prompt ends with the answer prefix) give their last
    attended position. Works with left or right padding.

    Raises:
        BackendError: a row holds more than one score token, or a score token at position 0.
    """
    is_score = torch.isin(input_ids, score_ids)
    counts = is_score.sum(dim=1)
    if bool((counts > 1).any()):
        raise BackendError("a prompt holds more than one score token; the score position is ambiguous")
    length = input_ids.shape[1]
    last_score = length - 1 - is_score.flip(1).int().argmax(dim=1)
    if attention_mask is None:
        last_token = torch.full_like(last_score, length - 1)
    else:
        last_token = length - 1 - attention_mask.flip(1).int().argmax(dim=1)
    pos = torch.where(counts > 0, last_score - 1, last_token)
    if bool((pos < 0).any()):
        raise BackendError("a score token is the first token of a prompt; nothing predicts it")
    return pos


def answer_targets(
    input_ids: torch.Tensor, score_pos: torch.Tensor, answer_lengths: torch.Tensor, offset: int, keep: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """CE targets over the kept logit positions ``offset .. offset+keep-1``.

    The answer of row i is the ``answer_lengths[i]`` tokens ending with the score token at ``score_pos[i] + 1``;
    the logits at positions ``p`` in ``[score_pos - n + 1, score_pos]`` predict ``input_ids[p + 1]``.

    Returns:
        ``(mask [B, keep] bool, targets [B, keep] long)``; targets are 0 where the mask is false.
    """
    positions = torch.arange(keep, device=input_ids.device) + offset  # [keep]
    first = (score_pos - answer_lengths + 1).unsqueeze(1)
    mask = (positions.unsqueeze(0) >= first) & (positions.unsqueeze(0) <= score_pos.unsqueeze(1))
    nxt = (positions + 1).clamp(max=input_ids.shape[1] - 1)
    targets = input_ids[:, nxt]
    return mask, torch.where(mask, targets, torch.zeros_like(targets))


class QScorerNet(nn.Module):
    """The fine-tuned MLLM (LoRA-wrapped, merged, or plain) plus the regression head.

    ``forward(inputs, logits_to_keep)`` runs the model once and returns ``(logits [B, keep, V], head [B])``: the
    head reads the last-layer hidden state (the input of the LM head, captured by a forward pre-hook so that
    no other layer's hidden states are kept) at the position that predicts the score token. The head output
    is the *normalized* score ``(MOS − lo) / (hi − lo)``, unclamped.
    """

    def __init__(self, lm: nn.Module, head: nn.Module, score_ids: Sequence[int]) -> None:
        super().__init__()
        self.lm = lm
        self.head = head
        self.register_buffer("score_ids", torch.tensor(list(score_ids), dtype=torch.long), persistent=False)
        self._captured: list[torch.Tensor] = []
        self._hook: Any = None
        self.attach()

    def attach(self) -> None:
        """(Re-)register the hook on the current LM head (call after replacing ``lm``, e.g. after a merge)."""
        if self._hook is not None:
            self._hook.remove()
        out = self.lm.get_output_embeddings()
        if out is None:
            raise BackendError(f"{type(self.lm).__name__} has no output embeddings (LM head) to read")
        self._hook = out.register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._captured.append(args[0])

    def forward(self, inputs: Mapping[str, torch.Tensor], logits_to_keep: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        ids = inputs["input_ids"]
        pos = score_positions(ids, inputs.get("attention_mask"), self.score_ids)
        self._captured.clear()
        try:
            out = self.lm(**inputs, logits_to_keep=int(logits_to_keep), use_cache=False)
            if len(self._captured) != 1:
                raise BackendError(f"expected one call of the LM head per forward, saw {len(self._captured)}")
            hidden = self._captured[0]
        finally:
            self._captured.clear()
        rel = pos - (ids.shape[1] - hidden.shape[1])
        if bool((rel < 0).any()):
            raise BackendError("logits_to_keep is too small to cover the score position")
        h = hidden[torch.arange(ids.shape[0], device=hidden.device), rel]
        with torch.autocast(device_type=h.device.type, enabled=False):
            y = self.head(h.float()).squeeze(-1)
        return out.logits, y
