"""Batch scoring on a Ray cluster with Ray Data (``lmmiqa score --engine ray``, ``lmmiqa eval --engine ray``).

The driver expands the inputs (folders, ``@lists``), drops the keys already done (resume), and builds a Ray
dataset of image paths. ``map_batches`` runs them through an actor pool
(``ray.data.ActorPoolStrategy(size=actors)``): each actor builds one scorer — and so loads one copy of the model
— when it starts, then loads and scores its batches with :meth:`lmmiqa.methods.base.Scorer.score_loaded`. With
GPUs in the cluster each actor gets one (``gpus_per_actor``), and the scorer's ``device="auto"`` picks it up.
Results stream back to the driver batch by batch, as :class:`~lmmiqa.types.ScoreResult` lists, so the callers
write them to the same JSONL files, with the same resume semantics, as the local engine. By default the output
order is the input order (``preserve_order``).

Images are read by the actors, so every node must see the input paths (a shared filesystem); only the
paths travel through Ray. Ray is imported inside the functions here (extra ``ray``).

Example::

    from lmmiqa.distributed import RayConfig, ray_score

    for batch in ray_score("q-align", ["photos/"], options={"model": "Qwen/Qwen3-VL-8B-Instruct"},
                           config=RayConfig(address="auto", actors=8)):
        ...
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lmmiqa.config import build_config
from lmmiqa.errors import BackendError, ConfigError, LmmiqaError, require
from lmmiqa.images import ImageLimits, expand_inputs, load_many
from lmmiqa.types import ScoreResult

log = logging.getLogger(__name__)


@dataclass
class RayConfig:
    """How to run on Ray.

    Attributes:
        address: ``None`` starts a local Ray instance for this run (stopped at the end); ``"auto"`` joins the
            cluster running on this machine; ``"ray://host:10001"`` connects a Ray client. A Ray session already
            initialised in this process is used as it is.
        actors: size of the actor pool (copies of the model).
        gpus_per_actor: GPUs reserved per actor; ``None`` = 1 when the cluster has GPUs, else 0.
        cpus_per_actor: CPUs reserved per actor.
        batch_size: images per actor batch (``None``: the scorer's ``batch_size``).
        num_cpus: CPUs of a local instance started here (``None``: all).
        preserve_order: stream results in input order (else as they complete, which can be faster when batches
            take very different times).
    """

    address: str | None = None
    actors: int = 1
    gpus_per_actor: float | None = None
    cpus_per_actor: float = 1.0
    batch_size: int | None = None
    num_cpus: int | None = None
    preserve_order: bool = True

    def __post_init__(self) -> None:
        if int(self.actors) < 1:
            raise ConfigError(f"actors must be >= 1, got {self.actors}")
        self.actors = int(self.actors)
        if self.gpus_per_actor is not None and self.gpus_per_actor < 0:
            raise ConfigError(f"gpus_per_actor must be >= 0, got {self.gpus_per_actor}")
        if self.cpus_per_actor <= 0:
            raise ConfigError(f"cpus_per_actor must be > 0, got {self.cpus_per_actor}")
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_cpus is not None and int(self.num_cpus) < 1:
            raise ConfigError(f"num_cpus must be >= 1, got {self.num_cpus}")


# ----------------------------------------------------------------------------------------------- scorer spec


def scorer_spec(method: Any, options: Mapping[str, Any] | None = None) -> tuple[type, Any]:
    """(scorer class, validated config) for the actors, without building the scorer (no model is loaded here).

    Args:
        method: a registered method name, ``"package.module:Class"`` (a plugin's Scorer subclass), or a scorer
            object (its class and config are used; a backend object injected into it is not shipped).
        options: method options (only with a name).

    Raises:
        UnknownNameError, ConfigError: unknown method or invalid options.
    """
    from lmmiqa.methods.base import Scorer

    if isinstance(method, Scorer):
        if options:
            raise ConfigError("options only apply when the method is given by name")
        return type(method), method.config
    if not isinstance(method, str):
        raise ConfigError(f"method must be a name or a Scorer, got {type(method).__name__}")
    from lmmiqa import registry

    cls = registry.resolve_method(method)
    opts = dict(options or {})
    opts = cls.preset_options(opts.pop("preset", None), opts)
    return cls, build_config(cls.config_cls, opts, what=f"method {cls.name!r}")


class ScoreActor:
    """A Ray Data actor that owns one scorer (one model copy) and scores batches of image paths.

    Args:
        scorer_cls: the method's Scorer class.
        config: its config dataclass.
    """

    def __init__(self, scorer_cls: type, config: Any) -> None:
        from lmmiqa.logs import show_warnings_as_lines

        show_warnings_as_lines()  # relayed by the driver as one plain line: `(ScoreActor pid=...) warning: ...`
        self.error: LmmiqaError | None = None
        try:
            self.scorer = scorer_cls(config)
            backend = getattr(type(self.scorer), "backend", None)
            if isinstance(backend, property):
                _ = self.scorer.backend  # load the model now: a bad model fails at start-up, not per batch
        except LmmiqaError as err:
            # reported with the first batch instead (see _fatal): a failed actor start reaches the driver as an
            # ActorDiedError whose text is the whole traceback
            self.error = err
        self.limits = ImageLimits(
            max_pixels=getattr(config, "max_image_pixels", ImageLimits.max_pixels),
            max_bytes=getattr(config, "max_bytes", ImageLimits.max_bytes),
        )
        self.workers = int(getattr(config, "decode_workers", 0) or 0)

    def __call__(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        import numpy as np

        from lmmiqa.errors import is_run_level

        keys = [str(k) for k in batch["key"]]
        if self.error is not None:
            return _fatal(keys, self.error)
        t0 = time.perf_counter()
        items = load_many(keys, self.limits, workers=self.workers)
        try:
            results = self.scorer.score_loaded(items, time.perf_counter() - t0)
        except LmmiqaError as err:
            if not is_run_level(err):
                raise
            return _fatal(keys, err)  # e.g. a segmenter that cannot be loaded: the run's error, not a batch's
        return {
            "key": np.asarray(keys, dtype=object),
            "result": np.asarray([json.dumps(r.to_dict()) for r in results], dtype=object),
        }


_FATAL = "__lmmiqa_fatal__"


def _fatal(keys: list[str], err: LmmiqaError) -> dict[str, Any]:
    """A batch that carries an actor's run-level error to the driver by value (Ray's exception wrapping loses the
    original exception and puts a traceback in the text); :func:`_raise_fatal` raises it there."""
    import numpy as np

    row = json.dumps({_FATAL: {"type": type(err).__name__, "message": str(err)}})
    return {"key": np.asarray(keys, dtype=object), "result": np.asarray([row] * len(keys), dtype=object)}


def _raise_fatal(payload: Mapping[str, Any]) -> None:
    """Raise the error an actor reported with :func:`_fatal`, as the same lmmiqa error class."""
    from lmmiqa import errors

    cls = getattr(errors, str(payload.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, LmmiqaError)):
        cls = BackendError
    err = cls.__new__(cls)
    Exception.__init__(err, str(payload.get("message")))
    raise err


# ----------------------------------------------------------------------------------------------- running


def _connect(config: RayConfig) -> bool:
    """Initialise Ray unless this process already did; returns True when a session was started here."""
    ray = require("ray", "ray", "the ray engine")
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True}
    # the driver prints the workers' lines with a coloured "(ScoreActor pid=...)" prefix; plain text in logs
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")
    if config.address:
        _probe_address(config.address)
        try:
            ray.init(address=config.address, **kwargs)
        except Exception as err:
            raise ConfigError(_connect_hint(config.address, err)) from err
    else:
        ray.init(num_cpus=config.num_cpus, **kwargs)
    return True


def _probe_address(address: str, timeout: float = 3.0) -> None:
    """For a ``host:port`` address, one short TCP connection first: Ray itself retries for minutes."""
    import socket

    if address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return
    except ValueError as err:
        raise ConfigError(_connect_hint(address, err)) from err
    except OSError as err:
        raise ConfigError(_connect_hint(address, ConnectionError(f"nothing answers at {address} ({err})"))) from err


def _connect_hint(address: str, err: BaseException) -> str:
    """One line for a Ray cluster that cannot be joined: what failed and the two ways on."""
    from lmmiqa.errors import spell

    given = spell(cli=f"--ray-address {address}", python=f"address={address!r}")
    drop = spell(cli="drop --ray-address", python="leave address=None")
    first = (str(err).strip().splitlines() or [""])[0]
    if address.startswith("ray://") and "ray[client]" in str(err):
        return (f"{given}: the Ray client is not installed (pip install 'ray[client]'); or {drop} to start a "
                "local Ray instance for this run")
    if address == "auto" and isinstance(err, ConnectionError):
        return (f"{given}: no Ray cluster is running on this machine; start one first with "
                "`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head` (on 127.0.0.1 only; export the variable for "
                f"this command too), or {drop} to start a local Ray instance for this run")
    return (f"{given}: cannot connect to the Ray cluster ({type(err).__name__}: {first}); check the address, "
            f"or {drop} to start a local Ray instance for this run")


def _progress_bar(total: int, enabled: bool | None) -> Any:
    if enabled is None:
        enabled = total > 8 and sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="ray", unit="img", file=sys.stderr, dynamic_ncols=True)


def ray_score(
    method: Any,
    inputs: Any,
    *,
    options: Mapping[str, Any] | None = None,
    config: RayConfig | None = None,
    skip: set[str] | None = None,
    progress: bool | None = None,
) -> Iterator[list[ScoreResult]]:
    """Score image files on Ray; yields result batches as they arrive (see the module docstring).

    Args:
        method: method name, ``"module:Class"`` or a scorer object (see :func:`scorer_spec`).
        inputs: paths, folders or ``@list`` files (files only: in-memory images cannot travel to the actors).
        options: method options (with a method name).
        config: Ray settings (default: a local instance with one actor).
        skip: input keys already done (resume); they are not scored.
        progress: progress bar on stderr (default: when more than 8 images and stderr is a terminal).

    Raises:
        ConfigError: in-memory inputs, or invalid method options (checked before Ray starts).
        MissingDependencyError: Ray is not installed (extra ``ray``).
        BackendError: the Ray job failed (e.g. the actors could not load the model).
    """
    config = config or RayConfig()
    scorer_cls, scorer_config = scorer_spec(method, options)
    keys: list[str] = []
    for i, x in enumerate(expand_inputs(inputs)):
        if not isinstance(x, str):
            raise ConfigError(
                f"input {i} is an in-memory {type(x).__name__}: the ray engine scores files (pass paths; every "
                "node must see them)"
            )
        keys.append(x)
    if skip:
        keys = [k for k in keys if k not in skip]
    if not keys:
        return
    batch_size = int(config.batch_size or getattr(scorer_config, "batch_size", 8) or 8)

    started = _connect(config)
    import ray

    ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.execution_options.preserve_order)
    bar = _progress_bar(len(keys), progress)
    iterator: Any = None
    try:
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.execution_options.preserve_order = config.preserve_order
        gpus = config.gpus_per_actor
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        ds = ray.data.from_items([{"key": k} for k in keys]).map_batches(
            ScoreActor,
            fn_constructor_kwargs={"scorer_cls": scorer_cls, "config": scorer_config},
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=min(config.actors, len(keys))),
            num_cpus=config.cpus_per_actor,
            num_gpus=gpus,
        )
        iterator = iter(ds.iter_batches(batch_size=None, batch_format="numpy"))
        while True:
            try:
                out = next(iterator)
            except StopIteration:
                break
            except LmmiqaError:
                raise
            except Exception as err:
                raise BackendError(f"the ray engine failed: {type(err).__name__}: {err}") from err
            rows = [json.loads(s) for s in out["result"]]
            if rows and _FATAL in rows[0]:
                _raise_fatal(rows[0][_FATAL])
            results = [ScoreResult.from_dict(d) for d in rows]
            if bar is not None:
                bar.update(len(results))
            yield results
    finally:
        if bar is not None:
            bar.close()
        if iterator is not None and hasattr(iterator, "close"):
            iterator.close()  # before Ray stops: an iterator left open logs a traceback when collected later
        ctx.enable_progress_bars, ctx.print_on_execution_start, ctx.execution_options.preserve_order = saved
        if started:
            ray.shutdown()


def ray_engine(
    scorer: Any,
    pending: list[str],
    on_results: Callable[[list[ScoreResult]], None],
    *,
    batch_size: int | None = None,
    progress: bool | None = None,
    address: str | None = None,
    actors: int = 1,
    gpus_per_actor: float | None = None,
    cpus_per_actor: float = 1.0,
    num_cpus: int | None = None,
    preserve_order: bool = True,
) -> None:
    """The evaluation runner's ``ray`` engine (:data:`lmmiqa.evaluation.runner.ENGINES`).

    Scores ``pending`` paths with the scorer's class and config on a Ray actor pool and calls ``on_results``
    for every batch as it arrives (from this thread). The keyword options are those of :class:`RayConfig`.
    """
    config = RayConfig(
        address=address,
        actors=actors,
        gpus_per_actor=gpus_per_actor,
        cpus_per_actor=cpus_per_actor,
        batch_size=batch_size,
        num_cpus=num_cpus,
        preserve_order=preserve_order,
    )
    for batch in ray_score(scorer, list(pending), config=config, progress=progress):
        on_results(batch)
