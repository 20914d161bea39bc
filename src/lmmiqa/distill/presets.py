"""LEAF's ``paper`` presets: the settings of the LEAF paper for every step that makes and uses a student (METHODS §3).

LEAF ("Decoupling Perception and Calibration: Label-Efficient Image Quality Assessment Framework", Li et al.,
arXiv 2601.20689, 2026) fixes values at each step, so its preset is one :class:`~lmmiqa.presets.Preset` per
command, each applied where the value is used:

* ``lmmiqa distill teach --preset paper``: the teacher (InternVL3.5-8B, zero-shot, the five-level prompt), pair
  judgments by a two-image comparison prompt asked in both orders, an entropy reliability per point.
* ``lmmiqa distill train --preset paper``: the ConvNeXt-Base student, ImageNet-pretrained.
* ``lmmiqa distill calibrate --preset paper``: a monotone map fitted on 10 % of the MOS labels.
* ``lmmiqa score --method leaf --preset paper``: the calibrated output; results record which steps of the student
  folder were made with the paper preset (``details.recipe``).

Explicit options override a preset's values, as everywhere. This module is data only (it imports nothing of the
distillation code), so the scorer, the steps and ``lmmiqa methods`` can all read it.
"""

from __future__ import annotations

from lmmiqa.presets import Preset, PresetValue

#: the paper's teacher: InternVL3.5-8B, in its transformers-native release (the original
#: ``OpenGVLab/InternVL3_5-8B`` needs hub remote code; the ``-HF`` release loads with transformers' own classes)
PAPER_TEACHER_MODEL = "OpenGVLab/InternVL3_5-8B-HF"
#: the paper's student
PAPER_STUDENT = "convnext-base"

REFERENCE = "LEAF: Li et al., Decoupling Perception and Calibration: Label-Efficient Image Quality Assessment " \
    "Framework, arXiv 2601.20689 (2026); lmmiqa METHODS §3"

#: the steps that make a LEAF student, in order (command names)
TEACH, TRAIN, CALIBRATE = "distill teach", "distill train", "distill calibrate"

TEACH_PAPER = Preset(
    name="paper",
    target=TEACH,
    config="lmmiqa.distill.teacher:TeacherConfig",
    summary="the LEAF paper's teacher: InternVL3.5-8B zero-shot, point and pair judgments with reliabilities",
    reference=REFERENCE,
    values={
        "method": PresetValue("q-align", "METHODS §0 (level sets: the LEAF teacher reads the five Q-Align words) "
                              "and §3.1(a); lmmiqa decision: the paper's exact wording is not published, lmmiqa "
                              "asks Q-Align's question"),
        "model": PresetValue(PAPER_TEACHER_MODEL, "METHODS §3.1: the teacher is InternVL3.5-8B, zero-shot; lmmiqa "
                             "decision: its transformers-native -HF release (no remote code)"),
        "pair_mode": PresetValue("prompt", "METHODS §3.1(b): pair-wise preferences from a two-image comparison "
                                 "prompt, asked in both orders"),
        "point_reliability": PresetValue("entropy", "METHODS §3.1(c) names max probability or entropy; lmmiqa "
                                         "decision: 1 - normalized entropy"),
    },
    notes=("InternVL3.5-8B needs about 17 GB of weights (bf16 on a GPU); on CPU it is very slow.",),
)

TRAIN_PAPER = Preset(
    name="paper",
    target=TRAIN,
    config="lmmiqa.distill.train:TrainConfig",
    summary="the LEAF paper's student: ConvNeXt-Base, ImageNet-pretrained, joint point + pair distillation",
    reference=REFERENCE,
    values={
        "student": PresetValue(PAPER_STUDENT, "METHODS §3.2: the student is ConvNeXt-Base"),
        "pretrained": PresetValue(True, "METHODS §3.2: ImageNet-pretrained (facebook/convnext-base-224)"),
        "w_point": PresetValue(1.0, "METHODS §3.2: point-wise regression/KL + pair-wise ranking, each weighted by "
                               "reliability; lmmiqa decision: the term weights are not published (1 : 0.5 : 1)"),
        "w_kl": PresetValue(0.5, "lmmiqa decision: the paper does not publish the KL weight"),
        "w_pair": PresetValue(1.0, "lmmiqa decision: the paper does not publish the pair weight"),
        "pair_prob": PresetValue("thurstone", "METHODS §3.2: a fidelity or Thurstone pair loss; lmmiqa decision: "
                                 "fidelity loss on the Thurstone probability Φ(Δ/√2)"),
    },
    notes=(
        "How the paper feeds images to the student (resize or crops, input size, epochs, learning rate) is not "
        "known here: those stay lmmiqa's defaults (`lmmiqa distill train --help`).",
        "Pretrained weights come from the hub (facebook/convnext-base-224) or --student-model DIR.",
    ),
)

CALIBRATE_PAPER = Preset(
    name="paper",
    target=CALIBRATE,
    config="lmmiqa.distill.calibrate:CalibrateConfig",
    summary="the LEAF paper's calibration: a monotone map fitted on 10 % of the MOS labels",
    reference=REFERENCE,
    values={
        "fraction": PresetValue(0.1, "METHODS §3.3-§3.4: calibration on 10 % of the MOS (the paper's 10 % rows)"),
        "kind": PresetValue("logistic", "METHODS §3.3: a monotone map (or a fine-tuned head); lmmiqa decision: "
                            "a monotone logistic fit"),
    },
)

LEAF_PAPER = Preset(
    name="paper",
    target="leaf",
    summary="the LEAF paper's scorer: the distilled student, calibrated to the MOS scale",
    reference=REFERENCE,
    values={
        "calibrated": PresetValue(True, "METHODS §3.3-§3.4: the paper's numbers are the calibrated student's"),
    },
    notes=(
        "The student folder carries the rest of the recipe: make it with `lmmiqa distill teach/train/calibrate "
        "--preset paper`; results say which steps were (details.recipe), and a warning is logged when some were "
        "not.",
    ),
)

#: the presets of the steps that make a LEAF student, by command
STAGE_PRESETS: dict[str, dict[str, Preset]] = {
    TEACH: {"paper": TEACH_PAPER},
    TRAIN: {"paper": TRAIN_PAPER},
    CALIBRATE: {"paper": CALIBRATE_PAPER},
}

__all__ = [
    "CALIBRATE",
    "CALIBRATE_PAPER",
    "LEAF_PAPER",
    "PAPER_STUDENT",
    "PAPER_TEACHER_MODEL",
    "STAGE_PRESETS",
    "TEACH",
    "TEACH_PAPER",
    "TRAIN",
    "TRAIN_PAPER",
]
