"""Training recipes of ``lmmiqa train q-scorer`` (:class:`~lmmiqa.presets.Preset` over
:class:`~lmmiqa.training.q_scorer.QScorerTrainConfig`): ``paper`` is Q-Scorer's official recipe (METHODS §4).

The official code (2kxx/Q-Scorer, MIT: ``train_mem.py``, ``scripts/train_lora.sh``, ``deepmlp.py``; copies in
``shared/data/official/q-scorer``) trains mPLUG-Owl2-LLaMA2-7B with LoRA (r 128, alpha 256, dropout 0.05) on the
query projections and the visual path of the value projections, the vision encoder, the visual abstractor and the LM
head in full, five score tokens added without ``lstrip`` (output rows set to the mean; input rows as
``resize_token_embeddings`` draws them, not trained), a ``deepmlp`` head (4096 → 2048 → 1024 → 1, ReLU) on the hidden
state that predicts the score token, and the loss ``0.05 · (CE + Σ_b (clamp(head_b, 0, 5) − MOS_b)² / B)`` on the raw
MOS; batch 16, 3 epochs, lr 2e-5, warm-up 0.03, cosine, bf16, gradient checkpointing; the vicuna_v1 conversation
(system prompt) in training, the question before the image. lmmiqa's default recipe differs where it does on purpose
(README: "Q-Scorer training recipes").
"""

from __future__ import annotations

from typing import Any

from lmmiqa.presets import DECISION, Preset, PresetValue, apply_preset, get_preset

_CODE = "Q-Scorer train_mem.py"
_SCRIPT = "Q-Scorer scripts/train_lora.sh"

#: the vicuna_v1 conversation's system text (train_lora.sh: --version v1)
VICUNA_V1_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                    "The assistant gives helpful, detailed, and polite answers to the user's questions.")
#: LoRA targets of train_mem.py's find_all_linear_names: q_proj and the visual value path, in the language model
OWL2_LORA_TARGET = r".*layers\.\d+\.self_attn\.(q_proj|v_proj\.multiway\.1)"

PAPER = Preset(
    name="paper",
    target="train q-scorer",
    summary="Q-Scorer's official recipe: mPLUG-Owl2-LLaMA2-7B, LoRA r128/α256 on q_proj + v_proj.multiway.1, vision "
    "encoder, abstractor and LM head trained, loss 0.05·(CE + squared error on the raw MOS clamped to [0, 5])",
    reference="Tang et al., Q-Scorer (AAAI 2026); 2kxx/Q-Scorer train_mem.py, scripts/train_lora.sh (MIT)",
    values={
        "model": PresetValue("MAGAer13/mplug-owl2-llama2-7b", f"{_SCRIPT} (LOAD=mplug-owl2-llama2-7b), README"),
        "tokens": PresetValue(5, f"{_CODE}: <score1>..<score5>; the release Qscorer_lora_5_1"),
        "epochs": PresetValue(3, f"{_SCRIPT}: --num_train_epochs 3"),
        "batch_size": PresetValue(16, f"{_SCRIPT}: --per_device_train_batch_size 16"),
        "grad_accum": PresetValue(1, f"{_SCRIPT}: --gradient_accumulation_steps 1"),
        "lr": PresetValue(2e-5, f"{_SCRIPT}: --learning_rate 2e-5"),
        "weight_decay": PresetValue(0.0, f"{_SCRIPT}: --weight_decay 0."),
        "warmup_ratio": PresetValue(0.03, f"{_SCRIPT}: --warmup_ratio 0.03"),
        "lr_schedule": PresetValue("cosine", f"{_SCRIPT}: --lr_scheduler_type cosine"),
        "max_grad_norm": PresetValue(1.0, "transformers TrainingArguments' default (train_lora.sh does not set it)"),
        "gradient_checkpointing": PresetValue(True, f"{_SCRIPT}: --gradient_checkpointing True"),
        "ce_weight": PresetValue(0.05, f"{_SCRIPT}: --weight_next_token 0.05 scales CE + score loss"),
        "mse_weight": PresetValue(0.05, f"{_SCRIPT}: --weight_next_token 0.05 (the score loss Σ(err²)/B inside it)"),
        "head_target": PresetValue("raw", f"{_CODE} / modeling_mplug_owl2.py: the head is compared with gt_score "
                                          "itself"),
        "loss_clamp": PresetValue((0.0, 5.0), "modeling_mplug_owl2.py forward_mlp: torch.clamp(score, 0, 5) in the "
                                              "loss; score() clamps the same at inference"),
        "lora_r": PresetValue(128, f"{_CODE}: TrainingArguments lora_r 128 (not overridden by train_lora.sh)"),
        "lora_alpha": PresetValue(256.0, f"{_CODE}: lora_alpha 256"),
        "lora_dropout": PresetValue(0.05, f"{_CODE}: lora_dropout 0.05"),
        "lora_target": PresetValue(OWL2_LORA_TARGET, f"{_CODE} find_all_linear_names: q_proj and v_proj.multiway.1 "
                                                     "outside the visual abstractor"),
        "tune_vision": PresetValue(True, f"{_SCRIPT}: --tune_visual_abstractor True --freeze_vision_model False"),
        "train_lm_head": PresetValue(True, f"{_CODE}: requires_grad = True for every parameter named lm_head "
                                           "(METHODS §4 does not list it)"),
        "train_token_rows": PresetValue(False, f"{_CODE}: the input rows of the new tokens are not trainable (only "
                                               "LoRA, lm_head, deepmlp, vision model and abstractor are)"),
        "token_lstrip": PresetValue(False, f"{_CODE}: tokenizer.add_tokens(token_list, special_tokens=True): "
                                           "'... is <score3>' is written '▁is ▁ <score3>'"),
        "head_dims": PresetValue((2048, 1024), "deepmlp.py: DeepMLP(4096, [2048, 1024], 1)"),
        "head_activation": PresetValue("relu", "deepmlp.py: ReLU (its residuals never apply: the widths differ)"),
        "image_position": PresetValue("after", "METHODS §4: the question, then the image (iqa_eval.py's prompt)"),
        "train_system_prompt": PresetValue(VICUNA_V1_SYSTEM, f"{_SCRIPT}: --version v1 (vicuna_v1 conversation); "
                                                             "the evaluation has no system prompt"),
        "bin_range": PresetValue(None, f"{DECISION}: the training split's MOS min-max cut into five equal bins "
                                       "(METHODS §4.2, as Q-Align); the release's dataset code was not available"),
    },
    notes=(
        "Input rows of the score tokens: the official code leaves them as resize_token_embeddings draws them "
        "(random); lmmiqa sets them to the mean of the vocabulary's rows (deterministic, so a saved adapter reloads "
        "to the same model; METHODS §4.1) and, like the official code, does not train them.",
        "The head starts at the mean training MOS (bias), torch's default weights; the official DeepMLP uses "
        "Kaiming-normal weights and a zero bias.",
        "The answer is trained up to the score token; the official conversation also trains the '</s>' after it.",
        "Distributed training: the official script runs DeepSpeed ZeRO-2 on several GPUs with 16 images per GPU; "
        "with `accelerate launch` lmmiqa keeps 16 per process (--batch-size is per device).",
        "The official recipe expects the MOS on a 0-5 scale (the clamp); a raw head refuses labels outside it.",
        "mPLUG-Owl2's vicuna_v1 conversation puts a space before 'ASSISTANT:'; lmmiqa renders the mPLUG-Owl2 format "
        "with the newline of Q-Align's scorer (and of Q-Scorer's own score()) in training and scoring alike.",
    ),
)

#: recipes of ``lmmiqa train q-scorer --preset NAME``
RECIPES: dict[str, Preset] = {"paper": PAPER}


def recipe_options(name: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` over the values of recipe ``name`` (explicit options win), with ``preset`` set to its name."""
    out = apply_preset(RECIPES, name, options, "train q-scorer")
    if name is not None:
        out["preset"] = get_preset(RECIPES, name, "train q-scorer").name
    return out


def recipe_config(name: str | None = "paper", **options: Any) -> Any:
    """A :class:`~lmmiqa.training.q_scorer.QScorerTrainConfig` of recipe ``name`` under ``options``
    (``recipe_config("paper", model="/models/mplug-owl2-llama2-7b")``)."""
    from lmmiqa.config import build_config
    from lmmiqa.training.q_scorer import QScorerTrainConfig

    return build_config(QScorerTrainConfig, recipe_options(name, options), what="lmmiqa train q-scorer")


__all__ = ["OWL2_LORA_TARGET", "PAPER", "RECIPES", "VICUNA_V1_SYSTEM", "recipe_config", "recipe_options"]
