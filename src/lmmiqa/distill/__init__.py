"""LEAF: label-efficient distillation of an MLLM quality judge into a lightweight student (METHODS §3).

The pipeline has three stages, each a module with a typed config and one entry function, and one artifact:

1. :mod:`lmmiqa.distill.teacher` — the teacher pass: point-wise scores (and level distributions), pair-wise
   preferences and a reliability per judgment, cached incrementally as JSONL (``lmmiqa distill teach``).
2. :mod:`lmmiqa.distill.train` — joint distillation of a student (:mod:`lmmiqa.distill.students`) with the
   losses of :mod:`lmmiqa.distill.losses` (``lmmiqa distill train``).
3. :mod:`lmmiqa.distill.calibrate` — a monotone map from student output to a MOS scale fitted on a few labels
   (``lmmiqa distill calibrate``).

The artifact (:mod:`lmmiqa.distill.artifact`) is a self-describing folder loaded by the ``leaf`` scorer
(:class:`lmmiqa.methods.leaf.LEAF`). Pure math lives in :mod:`lmmiqa.distill.judgments` (numpy) and
:mod:`lmmiqa.distill.losses` (torch). Importing this package loads no torch.
"""

from __future__ import annotations
