"""Dataset records: what lmmiqa knows about each IQA dataset, as data (not a class per dataset).

A :class:`DatasetRecord` names the label file a dataset ships with, the label formats it may come in, the
score direction and range, whether it is full-reference (FR) or no-reference (NR), and how it is split. The
records are registered by name in :data:`lmmiqa.registry.DATASETS`; :func:`get_record` resolves a name (or
alias) and raises :class:`~lmmiqa.errors.UnknownNameError` listing the valid ones.

Label formats (see ``../shared/data/README.md``):

* *collection format* (the MIT IQA-Dataset collection): ``dis_img_path, dis_type, [ref_img_path], score``;
  image paths start with the dataset folder (``KonIQ-10k/1024x768/…``), so ``--root`` is the folder that holds
  that dataset folder.
* *KonIQ official sets*: ``image_name, c1..c5, c_total, MOS, SD, set``; ``image_name`` is a bare file name, so
  ``--root`` is the folder that holds the images. The ``set`` column (training/validation/test) is the official
  7058/1000/2015 split.
* *AGIQA*: ``name, prompt, …, mos_quality, …`` (3K) and ``Image, Score`` (1K); bare file names, ``--root`` is
  the image folder.

Nothing is downloaded: every record only says where files are expected under a user-given root.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from lmmiqa.errors import ConfigError

#: how a dataset is split: ``official`` (a column of the label file or a companion file), ``random``
#: (seeded 80/20 over images) or ``by_reference`` (seeded 80/20 over reference images)
SPLIT_KINDS = ("official", "random", "by_reference")


@dataclass(frozen=True)
class LabelFormat:
    """Columns of one label-file layout.

    Attributes:
        name: short name of the layout (``collection``, ``koniq-official``, ``agiqa3k``, ``csv``).
        image_column: column holding the image path, relative to ``--root``.
        score_column: column holding the opinion score.
        ref_column: column holding the reference image path (FR datasets), or ``None``.
        type_column: column holding the distortion type, or ``None``.
        split_column: column holding the official split (``set`` for KonIQ), or ``None``.
        split_values: official split part -> value in ``split_column`` (e.g. ``train`` -> ``training``).
        score_range: ``(low, high)`` of the score in this layout (the scale the authors publish).
        higher_is_better: false for DMOS.
        signature: columns whose presence identifies this layout in a file header.
    """

    name: str
    image_column: str
    score_column: str
    ref_column: str | None = None
    type_column: str | None = None
    split_column: str | None = None
    split_values: tuple[tuple[str, str], ...] = ()
    score_range: tuple[float, float] | None = None
    higher_is_better: bool = True
    signature: tuple[str, ...] = ()

    def matches(self, header: list[str]) -> bool:
        """True when every column of :attr:`signature` (or image and score columns) is in ``header``."""
        need = self.signature or (self.image_column, self.score_column)
        return all(c in header for c in need)

    def with_overrides(
        self,
        *,
        image_column: str | None = None,
        score_column: str | None = None,
        ref_column: str | None = None,
        higher_is_better: bool | None = None,
        score_range: tuple[float, float] | None = None,
    ) -> LabelFormat:
        """A copy with the given columns/direction/range replaced (``None`` keeps the current value)."""
        changes: dict[str, object] = {}
        if image_column is not None:
            changes["image_column"] = image_column
        if score_column is not None:
            changes["score_column"] = score_column
            if score_column != self.score_column:
                changes["score_range"] = None  # the known range belonged to the other column
        if ref_column is not None:
            changes["ref_column"] = ref_column or None
        if higher_is_better is not None:
            changes["higher_is_better"] = higher_is_better
        if score_range is not None:
            changes["score_range"] = tuple(score_range)
        if not changes:
            return self
        changes["signature"] = ()
        return replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class DatasetRecord:
    """Everything lmmiqa knows about one dataset.

    Attributes:
        name: registered name (``koniq10k``, ``spaq``, ...).
        title: the dataset's published name.
        label_file: the label file's name; looked up inside ``--root`` when ``--labels`` is not given.
        formats: accepted label layouts; the first whose signature matches the file header is used.
        full_reference: true when the dataset has reference images (FR); NR otherwise.
        split: one of :data:`SPLIT_KINDS`: how ``seed:N`` splits are drawn (by image or by reference), and
            whether ``official`` exists.
        official_file: companion file holding the official split when the main label file lacks it (KonIQ:
            the official-sets file), joined on the image file name; searched next to the label file, then in
            ``--root``.
        synthetic: true for generated datasets whose scores are pseudo-MOS (see :mod:`lmmiqa.data.synth`).
        note: one line shown in reports (provenance or quirk).
        eval_resize: the resize the dataset's paper evaluates with, as an ``input_resize`` spec
            (``"shorter:512"`` for SPAQ); ``lmmiqa eval`` applies it unless ``--no-dataset-resize`` and records
            it in the run config. None: images as published.
    """

    name: str
    title: str
    label_file: str
    formats: tuple[LabelFormat, ...]
    full_reference: bool = False
    split: str = "random"
    official_file: str | None = None
    synthetic: bool = False
    note: str = ""
    official_parts: tuple[str, ...] = field(default=())
    eval_resize: str | None = None

    def __post_init__(self) -> None:
        if self.split not in SPLIT_KINDS:
            raise ConfigError(f"unknown split kind {self.split!r}; known: {', '.join(SPLIT_KINDS)}")
        if self.eval_resize is not None:
            from lmmiqa.backends.pixels import parse_resize

            parse_resize(self.eval_resize)
        if not self.formats:
            raise ConfigError(f"dataset record {self.name!r} needs at least one label format")

    @property
    def default_format(self) -> LabelFormat:
        """The first (preferred) label layout."""
        return self.formats[0]

    @property
    def higher_is_better(self) -> bool:
        """Score direction of the preferred layout."""
        return self.default_format.higher_is_better

    @property
    def score_range(self) -> tuple[float, float] | None:
        """Score range of the preferred layout."""
        return self.default_format.score_range

    @property
    def has_official_split(self) -> bool:
        """True when ``--split official`` is defined for this dataset."""
        return bool(self.official_parts)

    def detect_format(self, header: list[str], where: str = "label file") -> LabelFormat:
        """The layout matching ``header``; raises ConfigError naming the expected columns otherwise."""
        for fmt in self.formats:
            if fmt.matches(header):
                return fmt
        expected = " | ".join(", ".join(f.signature or (f.image_column, f.score_column)) for f in self.formats)
        raise ConfigError(
            f"{where} does not look like a {self.title} label file: columns {', '.join(header)}; "
            f"expected one of: {expected} (or pass --image-column/--score-column)"
        )

    def layout(self) -> str:
        """How a folder of this dataset must look, in words (for messages about a missing or wrong folder)."""
        layouts = []
        for fmt in self.formats:
            cols = ", ".join(fmt.signature or (fmt.image_column, fmt.score_column))
            where = ("paths that start with the dataset's own folder (e.g. " + self.title.replace(" ", "_")
                     + "/...), so DIR is the folder that holds it" if fmt.name == "collection"
                     else "bare image file names, so DIR holds the images")
            layouts.append(f"columns {cols}: {where}")
        text = (f"the {self.title} folder DIR holds the label file {self.label_file} and the images at the paths it "
                f"lists, relative to DIR; label layouts accepted: " + "; ".join(layouts))
        if self.official_file:
            text += f"; the official split also needs {self.official_file} next to the label file or in DIR"
        return text

    def summary(self) -> dict[str, object]:
        """JSON-safe description used in run configs and reports."""
        fmt = self.default_format
        return {
            "name": self.name,
            "title": self.title,
            "label_file": self.label_file,
            "full_reference": self.full_reference,
            "split": self.split,
            "higher_is_better": fmt.higher_is_better,
            "score_range": list(fmt.score_range) if fmt.score_range else None,
            "synthetic": self.synthetic,
            "note": self.note,
            "eval_resize": self.eval_resize,
        }


def _collection(
    score_range: tuple[float, float], *, fr: bool = False, higher_is_better: bool = True
) -> LabelFormat:
    return LabelFormat(
        name="collection",
        image_column="dis_img_path",
        score_column="score",
        ref_column="ref_img_path" if fr else None,
        type_column="dis_type",
        score_range=score_range,
        higher_is_better=higher_is_better,
        signature=("dis_img_path", "score"),
    )


_KONIQ_SPLIT = (("train", "training"), ("val", "validation"), ("test", "test"))

KONIQ10K = DatasetRecord(
    name="koniq10k",
    title="KonIQ-10k",
    label_file="KonIQ-10k.csv",
    formats=(
        _collection((1.0, 5.0)),
        LabelFormat(
            name="koniq-official",
            image_column="image_name",
            score_column="MOS",
            split_column="set",
            split_values=_KONIQ_SPLIT,
            score_range=(1.0, 100.0),
            signature=("image_name", "MOS", "set"),
        ),
    ),
    split="official",
    official_file="KonIQ-10k-official-sets.csv",
    official_parts=("train", "val", "test"),
    note="official split 7058/1000/2015 from the KonIQ set column",
)

SPAQ = DatasetRecord(
    name="spaq",
    title="SPAQ",
    label_file="SPAQ.csv",
    formats=(_collection((0.0, 100.0)),),
    note="smartphone photos (originals up to 4000x3000); usually 10 seeded 80/20 splits; evaluated with the "
    "shorter side resized to 512 (Fang et al., CVPR 2020)",
    eval_resize="shorter:512",
)

LIVEC = DatasetRecord(
    name="livec",
    title="LIVE Challenge",
    label_file="LIVE_Challenge.csv",
    formats=(_collection((0.0, 100.0)),),
)

KADID10K = DatasetRecord(
    name="kadid10k",
    title="KADID-10k",
    label_file="KADID-10k.csv",
    formats=(_collection((1.0, 5.0), fr=True),),
    full_reference=True,
    split="by_reference",
    note="synthetic distortions; splits by reference image",
)

AGIQA3K = DatasetRecord(
    name="agiqa3k",
    title="AGIQA-3K",
    label_file="AGIQA-3k.csv",
    formats=(
        LabelFormat(
            name="agiqa3k",
            image_column="name",
            score_column="mos_quality",
            score_range=(0.0, 5.0),
            signature=("name", "mos_quality"),
        ),
    ),
    note="AI-generated images; quality MOS (mos_quality); --root is the image folder",
)

AGIQA1K = DatasetRecord(
    name="agiqa1k",
    title="AGIQA-1K",
    label_file="AGIQA-1k.csv",
    formats=(
        LabelFormat(
            name="agiqa1k",
            image_column="Image",
            score_column="Score",
            score_range=(0.0, 5.0),
            signature=("Image", "Score"),
        ),
    ),
    note="AI-generated images; --root is the image folder",
)

CSIQ = DatasetRecord(
    name="csiq",
    title="CSIQ",
    label_file="CSIQ.csv",
    formats=(_collection((0.0, 1.0), fr=True, higher_is_better=False),),
    full_reference=True,
    split="by_reference",
    note="DMOS: lower is better",
)

TID2013 = DatasetRecord(
    name="tid2013",
    title="TID2013",
    label_file="TID2013.csv",
    formats=(_collection((0.0, 9.0), fr=True),),
    full_reference=True,
    split="by_reference",
)

LIVE = DatasetRecord(
    name="live",
    title="LIVE IQA (release 2)",
    label_file="LIVE.csv",
    formats=(_collection((0.0, 100.0), fr=True, higher_is_better=False),),
    full_reference=True,
    split="by_reference",
    note="DMOS (realigned, slightly outside 0-100): lower is better",
)

SYNTHETIC = DatasetRecord(
    name="synthetic",
    title="lmmiqa synthetic ladder",
    label_file="labels.csv",
    formats=(_collection((1.0, 5.0), fr=True),),
    full_reference=True,
    split="by_reference",
    synthetic=True,
    note="SYNTHETIC pseudo-MOS derived from distortion severity (lmmiqa synth), not human opinion",
)


def custom_record(
    *,
    image_column: str = "dis_img_path",
    score_column: str = "score",
    ref_column: str | None = None,
    type_column: str | None = None,
    higher_is_better: bool = True,
    score_range: tuple[float, float] | None = None,
    label_file: str = "labels.csv",
) -> DatasetRecord:
    """A record for any CSV label file (``--labels CSV --image-column … --score-column …``).

    Splits are seeded 80/20 by reference image when ``ref_column`` is given, else by image.
    """
    fmt = LabelFormat(
        name="csv",
        image_column=image_column,
        score_column=score_column,
        ref_column=ref_column or None,
        type_column=type_column,
        score_range=tuple(score_range) if score_range is not None else None,  # type: ignore[arg-type]
        higher_is_better=higher_is_better,
    )
    return DatasetRecord(
        name="csv",
        title="CSV labels",
        label_file=label_file,
        formats=(fmt,),
        full_reference=bool(ref_column),
        split="by_reference" if ref_column else "random",
    )


def get_record(name: str) -> DatasetRecord:
    """The registered record for ``name`` (aliases allowed); UnknownNameError lists the valid names."""
    from lmmiqa import registry

    rec = registry.resolve("dataset", name)
    if not isinstance(rec, DatasetRecord):
        raise ConfigError(f"registry entry for dataset {name!r} is not a DatasetRecord: {type(rec).__name__}")
    return rec
