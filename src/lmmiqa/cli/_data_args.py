"""The one way every command names its data (eval, bank build, distill, train, tools fit, levels-bound).

``--dataset NAME --root DIR`` or ``--labels CSV --root DIR [--image-column dis_img_path] [--score-column score]
[--ref-column ref_img_path] [--lower-better] [--score-range LO HI]``, plus ``--split`` and ``--skip-missing``.

Usage in a subcommand module::

    from lmmiqa.cli._data_args import add_data_args, dataset_from_args

    def register(sub):
        p = sub.add_parser("mycmd", ...)
        add_data_args(p)                      # split=True, images=True
        p.set_defaults(func=run)

    def run(args):
        ds = dataset_from_args(args)          # -> lmmiqa.data.Dataset
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmmiqa.data.loader import Dataset

_DATASET_NAMES = "koniq10k, spaq, livec, kadid10k, agiqa3k, agiqa1k, csiq, tid2013, live, synthetic"


def add_data_args(
    parser: argparse.ArgumentParser,
    split: bool = True,
    images: bool = True,
    required: bool = True,
) -> argparse._ArgumentGroup:
    """Add the data-naming flags to ``parser`` (in an argument group ``data``).

    Args:
        parser: the subcommand parser.
        split: add ``--split``.
        images: the command reads image files: adds ``--skip-missing`` and makes :func:`dataset_from_args`
            check that files exist; when false (``levels-bound``), ``--root`` is optional.
        required: when false, :func:`dataset_from_args` returns ``None`` if neither ``--dataset`` nor
            ``--labels`` is given (for commands where data is optional).
    """
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", metavar="NAME", help=f"a known dataset: {_DATASET_NAMES}")
    g.add_argument(
        "--root",
        metavar="DIR",
        help="folder the image paths of the label file are relative to (for collection-format files, the "
        "folder holding the dataset folder, e.g. the parent of KonIQ-10k/); a named dataset reads its label "
        "file from here unless --labels is given",
    )
    g.add_argument("--labels", metavar="CSV", help="label file (CSV); required without --dataset")
    g.add_argument("--image-column", metavar="COL", help="image path column (default: the dataset's, or dis_img_path)")
    g.add_argument("--score-column", metavar="COL", help="score column (default: the dataset's, or score)")
    g.add_argument("--ref-column", metavar="COL", help="reference image column (FR; splits by reference)")
    g.add_argument(
        "--lower-better",
        action="store_true",
        default=None,
        help="scores are lower-is-better (DMOS); named datasets know their direction",
    )
    g.add_argument("--score-range", nargs=2, type=float, metavar=("LO", "HI"), help="range of the score column")
    if split:
        from lmmiqa.data.splits import SPLIT_HELP

        g.add_argument(
            "--split",
            metavar="SPEC",
            help=f"{SPLIT_HELP}; default: every row. seed:N = the 20%% test part of seeded 80/20 split N "
            "(by reference image for synthetic datasets)",
        )
    if images:
        g.add_argument(
            "--skip-missing",
            action="store_true",
            help="skip (and count) image files that do not exist instead of stopping",
        )
    parser.set_defaults(_data_images=images, _data_required=required)
    return g


def dataset_from_args(args: argparse.Namespace, *, check_files: bool | None = None) -> Dataset | None:
    """Load the dataset named by the flags of :func:`add_data_args`.

    Args:
        args: parsed arguments.
        check_files: verify that image files exist; default: true when the parser was built with
            ``images=True``.

    Returns:
        The :class:`~lmmiqa.data.loader.Dataset` (already split), or ``None`` when the data flags are optional
        and absent.

    Raises:
        ConfigError: inconsistent flags (the message says what to pass); DataError: bad label file or missing
        images (see :func:`lmmiqa.data.loader.load_dataset`).
    """
    from lmmiqa.data.loader import load_dataset
    from lmmiqa.errors import ConfigError

    name = getattr(args, "dataset", None)
    labels = getattr(args, "labels", None)
    if name is None and labels is None:
        if not getattr(args, "_data_required", True):
            return None
        raise ConfigError("name the data with --dataset NAME --root DIR, or --labels CSV --root DIR")
    if check_files is None:
        check_files = bool(getattr(args, "_data_images", True))
    rng = getattr(args, "score_range", None)
    return load_dataset(
        name=name,
        root=getattr(args, "root", None),
        labels=labels,
        split=getattr(args, "split", None),
        image_column=getattr(args, "image_column", None),
        score_column=getattr(args, "score_column", None),
        ref_column=getattr(args, "ref_column", None),
        lower_better=getattr(args, "lower_better", None),
        score_range=(float(rng[0]), float(rng[1])) if rng else None,
        check_files=check_files,
        skip_missing=bool(getattr(args, "skip_missing", False)),
    )
