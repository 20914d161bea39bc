"""The ``lmmiqa`` command.

Each subcommand lives in its own module under :mod:`lmmiqa.cli` and exposes ``register(subparsers)``; adding
one is one file plus one line in :data:`SUBCOMMANDS`. Subcommand modules must import nothing heavy at module
level (torch, transformers, ...), so ``lmmiqa --help`` stays fast.

Exit status: 0 success, 1 when the work failed (e.g. no image could be scored), 2 usage and set-up errors (a bad
option, or a model, segmenter or encoder that cannot be loaded: one message, before or instead of per-image errors).
Output cut short by the reader (``lmmiqa score ... | head``) ends the command quietly, as Unix tools do.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from lmmiqa import __version__
from lmmiqa.errors import ConfigError, LmmiqaError, interface, is_run_level, set_interface

#: modules that each register one or more subcommands, in the order shown by --help
SUBCOMMANDS: list[str] = [
    "lmmiqa.cli.score",
    "lmmiqa.cli.assess",
    "lmmiqa.cli.methods",
    "lmmiqa.cli.demo",
    "lmmiqa.cli.eval",
    "lmmiqa.cli.reproduce",
    "lmmiqa.cli.report",
    "lmmiqa.cli.levels_bound",
    "lmmiqa.cli.synth",
    "lmmiqa.cli.bank",
    "lmmiqa.cli.tools",
    "lmmiqa.cli.train",
    "lmmiqa.cli.distill",
    "lmmiqa.cli.export",
    "lmmiqa.cli.serve",
]


class UsageError(LmmiqaError):
    """Bad command-line usage (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmmiqa",
        description="Image quality assessment with multimodal large language models.",
    )
    parser.add_argument("--version", action="version", version=f"lmmiqa {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in SUBCOMMANDS:
        importlib.import_module(mod).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from lmmiqa.logs import show_warnings_as_lines

    previous = interface()
    set_interface("cli")  # hints name flags (--model DIR), not Python arguments (model='DIR')
    restore_warnings = show_warnings_as_lines()  # `warning: ...`, not `path/x.py:212: SomeWarning: ...`
    try:
        return _main(argv)
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly; point stdout at devnull so the final flush cannot raise
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141  # 128 + SIGPIPE, the status of a Unix tool stopped by a closed pipe
    finally:
        set_interface(previous)  # main() called from Python (tests, scripts) leaves the interface as it was
        restore_warnings()


def _main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verbose == 0:
        # keep stderr for lmmiqa's own progress and errors (transformers reads this when it is imported)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (UsageError, ConfigError) as err:
        print(f"lmmiqa {args.command}: error: {err}", file=sys.stderr)
        return 2
    except LmmiqaError as err:
        print(f"lmmiqa {args.command}: error: {err}", file=sys.stderr)
        # a model/segmenter/encoder that cannot be loaded, a missing dependency: set-up errors (2), not failed work
        return 2 if is_run_level(err) else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
