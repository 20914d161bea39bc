"""Q-Scorer's released checkpoint, loaded as its authors ship it and scored as their ``iqa_eval.py`` does.

Q-Scorer (Tang et al., "Revisiting MLLM Based Image Quality Assessment: Errors and Remedy", AAAI 2026; 2kxx/Q-Scorer,
MIT) releases a folder made by its ``train_mem.py`` (METHODS §4):

* ``adapter_config.json`` + ``adapter_model.bin`` (or ``.safetensors``): a peft LoRA on mPLUG-Owl2-LLaMA2-7B
  (``MAGAer13/mplug-owl2-llama2-7b``) — ``q_proj`` and the visual value path ``v_proj.multiway.1`` of every layer;
* ``non_lora_trainables.bin``: every non-LoRA tensor under ``base_model.model.`` (its saving filter keeps them all):
  the embeddings and LM head resized to 32005 rows for ``<score1>`` … ``<score5>`` (ids 32000-32004), the
  fine-tuned vision model and visual abstractor, and the ``deepmlp`` regression head (4096 → 2048 → 1024 → 1, ReLU,
  residual where widths match);
* ``config.json`` (the base config with ``vocab_size`` 32005 and training flags).

Loading follows the official ``builder.py``: the base model, the tokenizer with the five score tokens added, the
embeddings resized, ``non_lora_trainables`` loaded over the base, then the LoRA merged (peft ``merge_and_unload``).
The tensor names lmmiqa expects were reconstructed from ``train_mem.py`` (``shared/data/official/q-scorer/derived``),
not read from the release itself, which could not be obtained here: a release whose files differ fails with a
message naming the first unexpected or mismatched tensors.

Scoring follows ``iqa_eval.py`` at the paper's commit: the prompt
``USER: How would you rate the quality of this image?\\n<|image|> ASSISTANT: The quality of the image is`` (the
``mplug_owl2`` conversation template: a space, not a newline, before ``ASSISTANT:``), the image padded to a square
with the CLIP mean colour, two steps — the greedy next token is appended and the model is run once more — and the
head reads the last layer's hidden state at that appended token. Why two steps: the score tokens were added
without ``lstrip``, so the LLaMA-2 tokenizer writes the training answer ``... image is <score3>`` as ``▁is ▁
<score3>`` (a lone ``▁`` before the token; checked with transformers 4.36): the training loss reads the hidden
state at that ``▁``, a trained model's greedy token after ``is`` is that ``▁``, and the second step reads the same
position. The head's output is clamped to [0, 5] (the official ``score()`` and the training loss clamp;
``iqa_eval.py`` itself writes it unclamped: ``details.head_raw``). The five score tokens' probabilities at the
second step (the position that predicts the score token; ``iqa_eval.py``'s "logits"/"probs") are the result's
``probabilities``.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmmiqa.errors import ConfigError, DataError, ModelLoadError, require

#: the files that make a folder a Q-Scorer release (an lmmiqa Q-Scorer artifact has ``qscorer.json`` instead)
RELEASE_MARKERS = ("adapter_config.json", "non_lora_trainables.bin")
NON_LORA_FILE = "non_lora_trainables.bin"
SCORE_TOKENS = ("<score1>", "<score2>", "<score3>", "<score4>", "<score5>")
#: the base model Q-Scorer was trained on (train_lora.sh; the README's model zoo)
DEFAULT_BASE = "MAGAer13/mplug-owl2-llama2-7b"
QUESTION = "How would you rate the quality of this image?"
ANSWER_PREFIX = "The quality of the image is"
#: the head's range: the official score() and the training loss clamp to it
SCORE_RANGE = (0.0, 5.0)
HEAD_PREFIX = "deepmlp."


#: the release on the hub (Q-Scorer's README, k = 5 score tokens): KonIQ SRCC .948 / PLCC .959 in the paper
HUB_RELEASE = "2kxx/Qscorer_lora_5_1"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_release(path: str | os.PathLike[str] | None) -> bool:
    """Whether ``path`` is a local folder laid out as Q-Scorer's released checkpoint."""
    if not path or not os.path.isdir(path):
        return False
    return all(os.path.isfile(os.path.join(path, f)) for f in RELEASE_MARKERS) and not os.path.isfile(
        os.path.join(path, "qscorer.json")
    )


def is_hub_release(ref: str | os.PathLike[str] | None) -> bool:
    """Whether ``ref`` names a release on the hub (``owner/name`` that is not a local path). lmmiqa's own Q-Scorer
    adapters are local folders, so a hub id given as the adapter is taken for a Q-Scorer release."""
    text = os.fspath(ref) if ref else ""
    return bool(text) and not os.path.exists(text) and bool(_HUB_ID.match(text))


def resolve_release(ref: str | os.PathLike[str], *, local_files_only: bool | None = None,
                    weights: bool = True) -> str:
    """The local folder of a release: ``ref`` itself, or the hub snapshot of a hub id (its JSON files only when
    ``weights`` is false). Offline and not cached, or the hub unreachable: one :class:`ModelLoadError` saying how to
    download it."""
    text = os.fspath(ref)
    if not is_hub_release(text):
        return text
    from lmmiqa.hub import resolve_local_only

    local_only = resolve_local_only(text, local_files_only, what="the Q-Scorer release",
                                    pass_as="--adapter FOLDER (Python: adapter='FOLDER')", folder="./Qscorer_lora_5_1")
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.bin", "*.safetensors"] if weights else ["*.json"]
        return str(snapshot_download(text, allow_patterns=patterns, local_files_only=local_only))
    except Exception as err:
        raise ModelLoadError(f"cannot get the Q-Scorer release {text!r} from the hub: {type(err).__name__}: {err}") from err


@dataclass(frozen=True)
class ReleaseSpec:
    """What a release folder says about itself.

    Attributes:
        path: the release folder.
        base_model: the base model named by its adapter config (a hub id; pass a local folder to use another copy).
        lora_r, lora_alpha: the LoRA rank and alpha; target_modules: the adapted modules.
        vocab_size: the resized vocabulary (base + 5 score tokens).
    """

    path: str
    base_model: str
    lora_r: int
    lora_alpha: float
    target_modules: tuple[str, ...]
    vocab_size: int | None
    mos_range: tuple[float, float] = SCORE_RANGE
    k: int = 5
    tokens: tuple[str, ...] = SCORE_TOKENS
    question: str = QUESTION
    answer_prefix: str = ANSWER_PREFIX
    merged: bool = False
    bin_source: str = "release"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bins(self) -> tuple[float, float]:
        return self.mos_range

    def to_dict(self) -> dict[str, Any]:
        return {"release": self.path, "base_model": self.base_model, "lora_r": self.lora_r,
                "lora_alpha": self.lora_alpha, "target_modules": len(self.target_modules),
                "vocab_size": self.vocab_size, "score_range": list(self.mos_range)}


def _clean_base(name: Any) -> str:
    text = str(name or "").strip()
    # the derived/real configs may annotate the id ("MAGAer13/mplug-owl2-llama2-7b (per README)")
    text = text.split(" ")[0] if text else ""
    if not text or (text.startswith(("/", ".")) and not os.path.isdir(text)):
        return DEFAULT_BASE
    return text


def read_release(path: str | os.PathLike[str], *, local_files_only: bool | None = None) -> ReleaseSpec:
    """Read a release folder's (or hub release's) adapter config and config (no weights)."""
    root = Path(resolve_release(path, local_files_only=local_files_only, weights=False))
    if not is_release(root):
        raise ConfigError(
            f"{root} is not a Q-Scorer release folder (it needs {', '.join(RELEASE_MARKERS)} and an adapter_model "
            "file, as the official train_mem.py writes them)"
        )
    try:
        adapter = json.loads((root / "adapter_config.json").read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{root / 'adapter_config.json'} is unreadable: {err}") from err
    config: dict[str, Any] = {}
    if (root / "config.json").is_file():
        try:
            config = json.loads((root / "config.json").read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"{root / 'config.json'} is unreadable: {err}") from err
    targets = adapter.get("target_modules") or ()
    return ReleaseSpec(
        path=str(root),
        base_model=_clean_base(adapter.get("base_model_name_or_path")),
        lora_r=int(adapter.get("r", 0) or 0),
        lora_alpha=float(adapter.get("lora_alpha", 0) or 0),
        target_modules=tuple(targets) if isinstance(targets, (list, tuple)) else (str(targets),),
        vocab_size=int(config["vocab_size"]) if "vocab_size" in config else None,
    )


def _head_module(state: dict[str, Any]) -> Any:
    """The ``deepmlp`` head built from its tensors (widths read from them): ``model.i.linear`` blocks with ReLU and a
    residual where input and output widths match, then ``output_layer``; its output squeezed to ``[B]``."""
    import torch
    from torch import nn

    class _Block(nn.Module):
        def __init__(self, d_in: int, d_out: int) -> None:
            super().__init__()
            self.linear = nn.Linear(d_in, d_out)
            self.residual = d_in == d_out

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.relu(self.linear(x))
            return out + x if self.residual else out

    class _Head(nn.Module):
        def __init__(self, widths: list[tuple[int, int]], d_last: int, d_out: int) -> None:
            super().__init__()
            self.model = nn.Sequential(*[_Block(a, b) for a, b in widths])
            self.output_layer = nn.Linear(d_last, d_out)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.output_layer(self.model(x)).squeeze(-1)

    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("model.") and k.endswith(".linear.weight")})
    if not blocks or "output_layer.weight" not in state:
        raise DataError(f"the release's head ({HEAD_PREFIX}*) is incomplete: found {sorted(state)[:6]}")
    widths = [(int(state[f"model.{i}.linear.weight"].shape[1]), int(state[f"model.{i}.linear.weight"].shape[0]))
              for i in blocks]
    out_w = state["output_layer.weight"]
    head = _Head(widths, int(out_w.shape[1]), int(out_w.shape[0]))
    head.load_state_dict(state, strict=True)
    return head


def split_non_lora(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``non_lora_trainables.bin`` → (model tensors by their published names, head tensors without ``deepmlp.``),
    stripping ``base_model.model.`` (as the official builder does) and peft's ``.base_layer`` (newer peft)."""
    model: dict[str, Any] = {}
    head: dict[str, Any] = {}
    for key, value in state.items():
        name = key[len("base_model.") :] if key.startswith("base_model.") else key
        if name.startswith("model.model.") or name.startswith("model.lm_head.") or name.startswith("model.deepmlp."):
            name = name[len("model.") :]
        name = name.replace(".base_layer.", ".")
        if name.startswith(HEAD_PREFIX):
            head[name[len(HEAD_PREFIX) :]] = value
        else:
            model[name] = value
    return model, head


@dataclass
class LoadedRelease:
    """A loaded release: ``backend`` (its ``model`` is the merged mPLUG-Owl2, its processor renders iqa_eval's
    prompt), ``head`` (the deepmlp head on the same device), ``spec``, the score-token ids."""

    spec: ReleaseSpec
    backend: Any
    head: Any
    token_ids: list[int]
    source_model: str


def load_release(
    path: str | os.PathLike[str],
    *,
    model: str | None = None,
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str | None = None,
    local_files_only: bool | None = None,
    max_batch: int = 32,
    max_batch_tokens: int | None = None,
) -> LoadedRelease:
    """Load a Q-Scorer release on its mPLUG-Owl2 base (see the module docstring).

    Args:
        path: the release folder.
        model: the base model folder or hub id (default: the adapter config's, ``MAGAer13/mplug-owl2-llama2-7b``).
        device, dtype, attn_implementation, local_files_only, max_batch, max_batch_tokens: transformers backend
            options (the official evaluation runs float16).

    Raises:
        ModelLoadError: the base is not an mPLUG-Owl2 checkpoint, or the release's tensors do not fit it (the first
            unexpected or mismatched names are listed).
    """
    torch = require("torch", "hf", "Q-Scorer's release")
    require("peft", "train", "Q-Scorer's release (its LoRA adapter)")
    from lmmiqa import families
    from lmmiqa.backends.transformers_local import TransformersBackend
    from lmmiqa.families.mplug_owl2 import MODEL_TYPE
    from lmmiqa.families.mplug_owl2.processing import MPLUGOwl2Processor
    from lmmiqa.hub import resolve_local_only
    from lmmiqa.torch_utils import pick_device

    spec = read_release(resolve_release(path, local_files_only=local_files_only))
    base = model or spec.base_model
    local_only = resolve_local_only(base, local_files_only)
    family = families.prepare(base, local_files_only=local_only)
    if family is None or family.model_type != MODEL_TYPE:
        raise ModelLoadError(
            f"Q-Scorer's release is a LoRA adapter on mPLUG-Owl2 ({DEFAULT_BASE}); the base {base!r} is not an "
            f"mplug_owl2 checkpoint (pass the base model folder with model=/--model)"
        )
    dev = pick_device(device)
    torch_dtype = TransformersBackend._pick_dtype(dtype, dev, base)
    try:
        processor = MPLUGOwl2Processor.from_pretrained(base, separator=" ", local_files_only=local_only)
        lm = family_model(base, torch_dtype, attn_implementation, local_only)
    except ModelLoadError:
        raise
    except Exception as err:
        raise ModelLoadError(f"cannot load the mPLUG-Owl2 base {base!r} of the Q-Scorer release: {err}") from err
    tok = processor.tokenizer
    n_before = len(tok)
    tok.add_tokens(list(SCORE_TOKENS), special_tokens=True)
    ids = [int(i) for i in tok.convert_tokens_to_ids(list(SCORE_TOKENS))]
    if ids != list(range(n_before, n_before + len(SCORE_TOKENS))):
        raise ModelLoadError(f"the tokenizer of {base!r} maps {list(SCORE_TOKENS)} to {ids}; Q-Scorer adds them at the end")
    vocab = spec.vocab_size or len(tok)
    if vocab != len(tok):
        raise ModelLoadError(
            f"the release's config says vocab_size {vocab}; the base tokenizer with the score tokens has {len(tok)}"
        )
    lm.resize_token_embeddings(vocab, mean_resizing=False)
    lm.config.vocab_size = vocab
    non_lora = torch.load(os.path.join(spec.path, NON_LORA_FILE), map_location="cpu", weights_only=True)
    model_state, head_state = split_non_lora(non_lora)
    _load_over(lm, model_state, Path(spec.path) / NON_LORA_FILE)
    if not head_state:
        raise ModelLoadError(f"{Path(spec.path) / NON_LORA_FILE} holds no {HEAD_PREFIX}* tensors: not a Q-Scorer release")
    head = _head_module(head_state)
    lm = _merge_lora(lm, spec.path)
    lm.to(dev).eval()
    backend = TransformersBackend.from_loaded(
        lm, processor, model_id=str(spec.path), device=str(dev), max_batch=max_batch,
        max_batch_tokens=max_batch_tokens, attn_implementation=attn_implementation,
    )
    # the head runs in the model's dtype, as in the official evaluation (model.deepmlp is part of the model)
    head = head.to(device=backend.device, dtype=backend.dtype).eval()
    return LoadedRelease(spec=spec, backend=backend, head=head, token_ids=ids, source_model=str(base))


def family_model(base: str, torch_dtype: Any, attn_implementation: str | None, local_only: bool) -> Any:
    """The mPLUG-Owl2 base through transformers' ``from_pretrained`` (the family is registered)."""
    import transformers

    kwargs: dict[str, Any] = {"dtype": torch_dtype, "local_files_only": local_only}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return transformers.AutoModelForImageTextToText.from_pretrained(base, **kwargs)


def _load_over(model: Any, state: dict[str, Any], source: Path) -> None:
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state
                  if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
    if unexpected or mismatched:
        parts = []
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s), first: {', '.join(unexpected[:3])}")
        if mismatched:
            parts.append(f"{len(mismatched)} of another shape, first: {'; '.join(mismatched[:3])}")
        raise ModelLoadError(f"{source} does not fit the mPLUG-Owl2 base: " + "; ".join(parts))
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        if key not in state:
            raise ModelLoadError(f"{source} holds no {key}: the score tokens' rows are missing")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)


def _merge_lora(model: Any, release: str) -> Any:
    """Apply the release's LoRA with peft and merge it into the weights, as the official builder does."""
    import warnings

    from peft import PeftModel

    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=UserWarning)
            peft_model = PeftModel.from_pretrained(model, release, is_trainable=False)
    except Exception as err:
        raise ModelLoadError(f"cannot apply the LoRA adapter of {release} to the mPLUG-Owl2 base: {err}") from err
    missing = _lora_missing(peft_model)
    if missing:
        raise ModelLoadError(f"the LoRA adapter in {release} did not load into {len(missing)} module(s), first: {missing[:3]}")
    return peft_model.merge_and_unload()


def _lora_missing(peft_model: Any) -> list[str]:
    """LoRA modules whose B matrix is still all zero after loading (the adapter file did not reach them)."""
    out = []
    for name, param in peft_model.named_parameters():
        if ".lora_B." in name and not bool(param.detach().abs().sum() > 0):
            out.append(name)
    return out


@dataclass
class ReleasePrediction:
    """Per image: the head's unclamped output, the score tokens' log-probabilities at the second step (after the
    greedy token), and the greedy token the hidden state was read at."""

    head_raw: list[float]
    token_logprobs: list[list[float]]
    next_token: list[int]


def predict_release(loaded: LoadedRelease, images: list[Any]) -> ReleasePrediction:
    """iqa_eval.py's two steps for a list of RGB images (padded to a square here), batched by the backend's token
    budget: step 1 on the prompt (with a KV cache), the greedy token appended, step 2 on that token alone; the head
    reads step 2's last-layer hidden state."""
    import torch

    from lmmiqa.families.mplug_owl2.modeling import output_cache
    from lmmiqa.images import pad_to_square
    from lmmiqa.types import Prompt

    backend = loaded.backend
    prompts = [Prompt.simple([QUESTION, pad_to_square(im)], answer_prefix=ANSWER_PREFIX) for im in images]
    ids = torch.tensor(loaded.token_ids, dtype=torch.long)

    def step(group: list[int], inputs: Any) -> Any:
        model = backend.model
        first = model(**inputs, use_cache=True, logits_to_keep=1)
        nxt = first.logits[:, -1].float().argmax(dim=-1)
        mask = inputs["attention_mask"]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        second = model(input_ids=nxt[:, None], attention_mask=mask, past_key_values=output_cache(first),
                       use_cache=True, output_hidden_states=True, logits_to_keep=1)
        logits = second.logits[:, -1].float()
        hidden = second.hidden_states[-1][:, -1]
        head_param = next(loaded.head.parameters())
        raw = loaded.head(hidden.to(device=head_param.device, dtype=head_param.dtype))
        lp = torch.log_softmax(logits, dim=-1)[:, ids.to(logits.device)]
        return raw.float().cpu(), lp.cpu(), nxt.cpu()

    outs, _, inverse = backend._run_groups(prompts, step)
    raw = torch.cat([o[0] for o in outs])[inverse]
    lp = torch.cat([o[1] for o in outs])[inverse]
    nxt = torch.cat([o[2] for o in outs])[inverse]
    return ReleasePrediction(raw.double().tolist(), lp.double().tolist(), [int(t) for t in nxt])


__all__ = [
    "ANSWER_PREFIX",
    "DEFAULT_BASE",
    "HUB_RELEASE",
    "QUESTION",
    "RELEASE_MARKERS",
    "SCORE_RANGE",
    "SCORE_TOKENS",
    "LoadedRelease",
    "ReleasePrediction",
    "ReleaseSpec",
    "is_hub_release",
    "is_release",
    "load_release",
    "predict_release",
    "read_release",
    "resolve_release",
    "split_non_lora",
]
