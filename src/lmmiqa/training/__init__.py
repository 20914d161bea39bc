"""Training loops that fine-tune MLLMs for quality scoring.

* :mod:`lmmiqa.training.q_scorer_model` — Q-Scorer's pieces (METHODS §4): score tokens, the regression head,
  the LoRA model and the saved artifact (adapter folder and merged export).
* :mod:`lmmiqa.training.q_scorer` — the Q-Scorer training loop (``lmmiqa train q-scorer``).

Nothing heavy is imported here; torch, transformers, peft and accelerate are imported inside the functions that
need them (extras ``hf`` and ``train``).
"""

from __future__ import annotations
