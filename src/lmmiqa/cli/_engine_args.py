"""Shared command-line options that choose where scoring runs (``score`` and ``eval``): this process, or a Ray
cluster (``--engine ray --ray-address auto --actors 8``). See :mod:`lmmiqa.distributed`."""

from __future__ import annotations

import argparse
from typing import Any

ENGINES = ("local", "ray")


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """Add --engine, --ray-address, --actors, --gpus-per-actor, --cpus-per-actor."""
    g = parser.add_argument_group("engine")
    g.add_argument("--engine", choices=ENGINES, default="local",
                   help="local (this process, default) or ray (an actor pool on a Ray cluster, one model per actor)")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="--engine ray: 'auto' joins the cluster running on this machine, 'ray://host:10001' a remote "
                   "one; default: start a local Ray instance for this run")
    g.add_argument("--actors", type=int, default=None, metavar="N",
                   help="--engine ray: actors in the pool, i.e. model copies (default 1)")
    g.add_argument("--gpus-per-actor", type=float, default=None, metavar="G",
                   help="--engine ray: GPUs per actor (default: 1 when the cluster has GPUs, else 0)")
    g.add_argument("--cpus-per-actor", type=float, default=None, metavar="C",
                   help="--engine ray: CPUs per actor (default 1)")


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The Ray options the user set (empty for the local engine).

    Raises:
        UsageError: Ray options given with ``--engine local``.
    """
    from lmmiqa.cli import UsageError

    given = {
        "address": args.ray_address,
        "actors": args.actors,
        "gpus_per_actor": args.gpus_per_actor,
        "cpus_per_actor": args.cpus_per_actor,
    }
    given = {k: v for k, v in given.items() if v is not None}
    if args.engine != "ray":
        if given:
            flags = ", ".join("--" + ("ray-address" if k == "address" else k.replace("_", "-")) for k in given)
            raise UsageError(f"{flags} only apply with --engine ray")
        return {}
    return given


def ray_config(args: argparse.Namespace, batch_size: int | None = None) -> Any:
    """The :class:`~lmmiqa.distributed.RayConfig` the command line describes."""
    from lmmiqa.distributed import RayConfig

    return RayConfig(batch_size=batch_size, **engine_options(args))
