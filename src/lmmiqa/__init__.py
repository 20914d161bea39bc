"""lmmiqa: image quality assessment with multimodal large language models.

The front door: :func:`create_scorer`, :func:`list_methods`, :func:`score`, :func:`evaluate`,
:class:`ScoreResult` and :class:`EvalReport`. Importing lmmiqa loads no torch; heavy dependencies are imported
by the component that needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lmmiqa._version import __version__
from lmmiqa.types import ScoreResult

if TYPE_CHECKING:
    from lmmiqa.evaluation.report import EvalReport
    from lmmiqa.methods.base import Scorer

__all__ = ["EvalReport", "ScoreResult", "__version__", "create_scorer", "evaluate", "list_methods", "score"]


def list_methods() -> dict[str, str]:
    """Registered method names -> one-line summary (resolving each method's class lazily)."""
    from lmmiqa import registry

    out: dict[str, str] = {}
    for name in registry.names("method"):
        try:
            cls = registry.resolve("method", name)
            out[name] = getattr(cls, "summary", "") or (cls.__doc__ or "").strip().splitlines()[0]
        except ImportError as err:
            out[name] = f"(unavailable: {err})"
    return out


def create_scorer(method: str = "q-align", **options: Any) -> Scorer:
    """Create a scorer by method name.

    Args:
        method: a registered method name (see :func:`list_methods`), e.g. ``"q-align"``, ``"standard-guided"``,
            or ``"package.module:Class"`` for a plugin's Scorer subclass.
        **options: method options, e.g. ``model=``, ``backend=``, ``levels=``, ``readout=``, ``batch_size=``.

    Raises:
        UnknownNameError: the method is not registered (the message lists the valid names).
        ConfigError: an option is unknown or invalid.
    """
    from lmmiqa import registry

    return registry.resolve_method(method).from_options(**options)


def score(images: Any, method: str = "q-align", **options: Any) -> list[ScoreResult]:
    """One-shot: create a scorer and score ``images`` (paths, folders, ``@lists``, PIL images, arrays)."""
    batch_size = options.pop("batch_size", None)
    scorer = create_scorer(method, **options)
    return scorer.score(images, batch_size=batch_size)


def evaluate(scorer: Any, **kwargs: Any) -> EvalReport:
    """Evaluate a scorer on a dataset split; see :func:`lmmiqa.evaluation.runner.evaluate`."""
    from lmmiqa.evaluation.runner import evaluate as _evaluate

    return _evaluate(scorer, **kwargs)


def __getattr__(name: str) -> Any:
    if name == "EvalReport":
        from lmmiqa.evaluation.report import EvalReport

        return EvalReport
    raise AttributeError(f"module 'lmmiqa' has no attribute {name!r}")
