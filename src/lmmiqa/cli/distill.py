"""``lmmiqa distill``: LEAF label-efficient distillation (METHODS §3) — teach, train, calibrate, info.

::

    lmmiqa distill teach --teacher q-align --teacher-model Qwen/Qwen3-VL-8B-Instruct --images /data/unlabeled \\
        --pairs 20000 --out teach/koniq
    lmmiqa distill train --teacher-labels teach/koniq --student convnext-base --epochs 10 --out students/koniq
    lmmiqa distill calibrate students/koniq --dataset koniq10k --root /data/koniq --split official:train --fraction 0.1
    lmmiqa score photos/ --method leaf --student students/koniq

``--preset paper`` on each step (and on ``score --method leaf``) applies the LEAF paper's settings for that step
(:mod:`lmmiqa.distill.presets`; ``lmmiqa methods --presets`` lists them with their sources); explicit options win.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from lmmiqa.cli._method_args import _key_value

#: stdout formats of teach, train and info: a few lines of text, or the whole summary as JSON
SUMMARY_FORMATS = ("text", "json")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "distill",
        help="LEAF: distill an MLLM (or any scorer) into a fast student: teach, train, calibrate",
        description="LEAF label-efficient distillation: `teach` caches a teacher's point and pair judgments of "
        "unlabeled images, `train` distills them into a lightweight student, `calibrate` maps the student to a "
        "MOS scale with a few labels; then score with `lmmiqa score --method leaf --student DIR`.",
    )
    p.set_defaults(func=lambda args: _usage(p))
    dsub = p.add_subparsers(dest="distill_command", metavar="STEP")
    _register_teach(dsub)
    _register_train(dsub)
    _register_calibrate(dsub)
    _register_info(dsub)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# --------------------------------------------------------------------------- teach


def _register_teach(dsub: Any) -> None:
    from lmmiqa.distill.judgments import DERIVED_PAIR_MODELS, POINT_RELIABILITIES
    from lmmiqa.distill.teacher import DEFAULT_PAIRS_PER_IMAGE, PAIR_MODES

    p = dsub.add_parser(
        "teach",
        help="run a teacher over unlabeled images; cache point and pair judgments (resumable)",
        description="Judge unlabeled images with a teacher (any scoring method: q-align and the other MLLM "
        "methods, classical tools such as brisque/niqe, or package.module:Class). Points: the score "
        "(oriented so that higher is better; lower-is-better teachers are negated) and, where the teacher has "
        "one, its level distribution, with a reliability from its entropy. Pairs: informative pairs (rank "
        "neighbours with close but different scores) plus random pairs, judged by a two-image comparison "
        "prompt in both orders (MLLM teachers) or derived from the point scores (Thurstone). Written to "
        "--out as teacher.json, points.jsonl and pairs.jsonl, flushed per batch; run again to resume.",
    )
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="a named set of option values: 'paper' = the LEAF paper's teacher (InternVL3.5-8B, q-align "
                   "prompt, pairs by prompt, entropy reliability); explicit options override it")
    p.add_argument("--teacher", default=None, metavar="METHOD",
                   help="teacher method (see `lmmiqa methods`) or package.module:Class (required without --preset)")
    p.add_argument("--teacher-model", default=None, metavar="MODEL", help="the teacher's model (hub id, folder, or http://host:port/v1#name)")
    p.add_argument("--teacher-backend", default=None, metavar="NAME", help="transformers (default) or openai")
    p.add_argument("--device", default=None, help="teacher device: auto (default), cpu, cuda, ...")
    p.add_argument("--dtype", default=None, help="teacher dtype: auto (default), float32, bfloat16, float16")
    p.add_argument("--teacher-option", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="any other teacher option (repeatable; VALUE parsed as JSON when it parses)")
    p.add_argument("--images", nargs="+", action="extend", required=True, metavar="PATH",
                   help="unlabeled images: files, folders (recursive) or @list files")
    p.add_argument("--pairs", type=int, default=None,
                   help=f"number of pairs to judge (default: {DEFAULT_PAIRS_PER_IMAGE} per image; 0 = points only)")
    p.add_argument("--pair-mode", choices=PAIR_MODES, default=None,
                   help="prompt (two-image comparison, MLLM teachers), derived (from point scores), or auto (default)")
    p.add_argument("--close-fraction", type=float, default=0.5, help="share of informative close-score pairs (default 0.5)")
    p.add_argument("--close-window", type=int, default=8, help="rank distance of close pairs (default 8)")
    p.add_argument("--derived-model", choices=DERIVED_PAIR_MODELS, default="thurstone", help="model of derived pairs")
    p.add_argument("--point-reliability", choices=POINT_RELIABILITIES, default=None,
                   help="entropy: 1 - normalized entropy (default); maxprob: the largest level probability")
    p.add_argument("--batch-size", type=int, default=8, help="images per teacher batch (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the pair sampling (default 0)")
    p.add_argument("--out", required=True, metavar="DIR", help="cache folder (created; resumed when it exists)")
    p.add_argument("--restart", action="store_true", help="discard judgments already in --out")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bars on stderr")
    p.add_argument("--format", choices=SUMMARY_FORMATS, default="text",
                   help="summary on stdout: text (default: a few lines) or json")
    p.set_defaults(func=run_teach)


def run_teach(args: argparse.Namespace) -> int:
    from lmmiqa.distill.teacher import teach, teacher_config
    from lmmiqa.errors import ConfigError

    if args.teacher is None and args.preset is None:
        raise ConfigError("give the teacher: --teacher METHOD (with --teacher-model MODEL), or --preset paper")
    options: dict[str, Any] = {}
    for key, value in (("model", args.teacher_model), ("backend", args.teacher_backend), ("device", args.device),
                       ("dtype", args.dtype)):
        if value is not None:
            options[key] = value
    for key, value in args.teacher_option:
        options[key] = value
    config = teacher_config(
        args.preset,
        method=args.teacher,
        teacher_options=options,
        pairs=args.pairs,
        pair_mode=args.pair_mode,
        close_fraction=args.close_fraction,
        close_window=args.close_window,
        derived_model=args.derived_model,
        point_reliability=args.point_reliability,
        batch_size=args.batch_size,
        seed=args.seed,
        progress=args.progress,
    )
    summary = teach(args.images, args.out, config, restart=args.restart)
    d = summary.to_dict()
    if args.format == "json":
        print(json.dumps(d, indent=2))
    else:
        print(f"teacher {args.teacher}: {d['n_points']} of {d['n_images']} image(s) judged, {d['n_pairs']} pair(s) "
              f"({d['pair_mode']}) in {d['seconds']:.1f} s -> {d['out']}")
        if d.get("negated"):
            print("  the teacher's scores are lower-is-better: stored negated (higher is better)")
    if summary.n_point_failures:
        print(f"lmmiqa distill teach: {summary.n_point_failures} image(s) could not be judged; see "
              f"{args.out}/points.jsonl", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- train


def _student_help() -> str:
    from lmmiqa.distill.students import student_summaries

    return "; ".join(f"{name}: {summary}" for name, summary in student_summaries().items())


def _register_train(dsub: Any) -> None:
    from lmmiqa import registry

    names = registry.names("student")
    p = dsub.add_parser(
        "train",
        help="distill a student from a teacher cache (joint point + pair loss; checkpoints; resumable)",
        description="Train a lightweight student on a teacher cache: regression to the standardized teacher "
        "score + KL to its level distribution (when present) + fidelity loss on pair preferences, each "
        "weighted by the judgment's reliability. A checkpoint is written every epoch; run again to resume. "
        f"Students: {_student_help()}.",
    )
    p.add_argument("--teacher-labels", required=True, metavar="DIR", help="teacher cache (`lmmiqa distill teach --out`)")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="a named set of option values: 'paper' = the LEAF paper's student (convnext-base, "
                   "ImageNet-pretrained); explicit options override it")
    p.add_argument("--student", default=None, metavar="NAME", help=f"student: {', '.join(names)} (default small-cnn)")
    p.add_argument("--student-model", default=None, metavar="MODEL",
                   help="hub id or local folder of the student checkpoint (default: the student's own, e.g. "
                   "facebook/convnext-base-224)")
    p.add_argument("--student-option", action="append", type=_key_value, default=[], metavar="KEY=VALUE",
                   help="student option, e.g. channels=[8,16,32,64] for small-cnn (repeatable)")
    p.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=None,
                   help="load pretrained weights (default: yes for convnext/resnet; --no-pretrained builds them "
                   "from their config with random weights, offline)")
    p.add_argument("--image-size", type=int, default=None,
                   help="input side: the crop side in crops mode (default: about half the images' short side, rounded "
                   "down to 16, at least the student's crop (small-cnn 64, 224 otherwise), at most 192; the "
                   "student's size in the other modes)")
    p.add_argument("--resize-mode", choices=["crops", "resize", "center-crop"], default="crops",
                   help="crops (default: random native-resolution crops in training, the mean of --crops fixed crops "
                   "at inference; keeps noise, blur and blocking), resize (whole image squashed to the input side) "
                   "or center-crop")
    p.add_argument("--crops", type=int, default=None,
                   help="inference crops per image in crops mode (default: enough grid crops to tile the image, 4 to "
                   "9)")
    p.add_argument("--crop-layout", choices=["grid", "corners"], default="grid",
                   help="grid (default; follows the image's aspect ratio) or corners (centre + 4 corners, at most 5)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs (default: 10, or more on small teacher caches so that training makes about 640 "
                   "optimizer steps; at most 200)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per point batch (default: 8 below 1000 training images, else 32)")
    p.add_argument("--pairs-per-batch", type=int, default=None, help="pairs per step (default batch-size/2)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the student's)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="AdamW weight decay (default 1e-4)")
    p.add_argument("--w-point", type=float, default=None, help="weight of the point regression term (default 1)")
    p.add_argument("--w-kl", type=float, default=None, help="weight of the level-distribution KL term (default 0.5)")
    p.add_argument("--w-pair", type=float, default=None, help="weight of the pair fidelity term (default 1)")
    p.add_argument("--pair-prob", choices=["thurstone", "sigmoid"], default=None,
                   help="student pair probability: Phi(d/sqrt2) (default) or sigmoid(d)")
    p.add_argument("--no-flip", dest="flip", action="store_false", help="no horizontal-flip augmentation")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="hold out this share of images to report the student's SRCC to its teacher per epoch and at "
                   "the end (default: 0.1 with at least 50 images, else 0)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0): the run is deterministic for it")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")
    p.add_argument("--workers", type=int, default=None, help="image decoding threads (default: CPU count, at most 8)")
    p.add_argument("--cache-mb", type=int, default=2048, help="memory for decoded images (default 2048)")
    p.add_argument("--out", required=True, metavar="DIR", help="student folder (artifact + checkpoints)")
    p.add_argument("--restart", action="store_true", help="ignore a checkpoint in --out and train from scratch")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr")
    p.add_argument("--format", choices=SUMMARY_FORMATS, default="text",
                   help="summary on stdout: text (default: a few lines; the per-epoch history is in "
                   "OUT/training.json) or json (the whole summary, with the history)")
    p.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    from lmmiqa.distill.train import train_config, train_student

    config = train_config(
        args.preset,
        student=args.student,
        student_options=dict(args.student_option),
        student_model=args.student_model,
        pretrained=args.pretrained,
        image_size=args.image_size,
        resize_mode=args.resize_mode,
        crop_layout=args.crop_layout,
        crops=args.crops,
        epochs=args.epochs,
        batch_size=args.batch_size,
        pairs_per_batch=args.pairs_per_batch,
        lr=args.lr,
        weight_decay=args.weight_decay,
        w_point=args.w_point,
        w_kl=args.w_kl,
        w_pair=args.w_pair,
        pair_prob=args.pair_prob,
        flip=args.flip,
        val_fraction=args.val_fraction,
        seed=args.seed,
        device=args.device,
        cache_mb=args.cache_mb,
        workers=args.workers,
        progress=args.progress,
    )
    summary = train_student(args.teacher_labels, args.out, config, restart=args.restart)
    if args.format == "json":
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(train_text(summary))
    fid = summary.fidelity
    parts = []
    if fid.get("val_srcc") is not None:
        parts.append(f"held-out {fid['val_srcc']:+.3f} on {fid['n_val']} image(s)")
    if fid.get("train_srcc") is not None:
        parts.append(f"training {fid['train_srcc']:+.3f} on {fid['n_train_checked']} image(s)")
    if parts:
        print(f"lmmiqa distill train: fidelity to the teacher (SRCC student vs teacher): {', '.join(parts)}",
              file=sys.stderr)
    for warning in summary.warnings:
        print(f"lmmiqa distill train: warning: {warning}", file=sys.stderr)
    return 0


def train_text(summary: Any) -> str:
    """A few lines about a training run: what was trained, on what, the last epoch's losses, where it went."""
    resumed = f", resumed after epoch {summary.resumed_from_epoch}" if summary.resumed_from_epoch else ""
    lines = [f"student {summary.student}: {summary.epochs} epoch(s){resumed} on {summary.n_train} image(s) "
             f"({summary.n_val} held out), {summary.n_pairs} pair(s), in {summary.seconds:.1f} s -> {summary.out}"]
    last = summary.history[-1] if summary.history else None
    if last:
        losses = ", ".join(f"{k} {v:.4g}" for k, v in last.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch")
        lines.append(f"  last epoch ({last.get('epoch', len(summary.history))}): {losses}")
    lines.append(f"  per-epoch history: {summary.out}/training.json (or --format json)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- calibrate


def _register_calibrate(dsub: Any) -> None:
    from lmmiqa.cli._data_args import add_data_args
    from lmmiqa.distill.calibrate import CALIBRATION_KINDS

    p = dsub.add_parser(
        "calibrate",
        help="fit a monotone map from the student's output to a MOS scale on a few labels",
        description="Score a labelled dataset with the student, fit an increasing map (logistic by default, "
        "isotonic or linear) on a seeded subset (--fraction or --n), store it in the student folder "
        "(calibration.json) and report SRCC/PLCC/RMSE of the calibrated output on the held-out remainder.",
    )
    p.add_argument("student", metavar="STUDENT", help="student folder (`lmmiqa distill train --out`)")
    p.add_argument("--preset", default=None, metavar="NAME",
                   help="a named set of option values: 'paper' = the LEAF paper's calibration (10 %% of the labels, "
                   "monotone logistic map); explicit options override it")
    add_data_args(p)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--fraction", type=float, default=None, help="share of the labelled images used to fit (default 0.1)")
    size.add_argument("--n", type=int, default=None, help="number of labelled images used to fit")
    p.add_argument("--kind", choices=CALIBRATION_KINDS, default=None, help="the map (default logistic)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset draw (default 0)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, ...")
    p.add_argument("--batch-size", type=int, default=32, help="images per student batch (default 32)")
    p.add_argument("--format", choices=["text", "json"], default="text", help="report format (default text)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar on stderr")
    p.set_defaults(func=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    from lmmiqa.cli._data_args import dataset_from_args
    from lmmiqa.distill.calibrate import calibrate_config, calibrate_student

    config = calibrate_config(args.preset, kind=args.kind, fraction=args.fraction, n=args.n, seed=args.seed,
                              device=args.device, batch_size=args.batch_size, progress=args.progress)
    dataset = dataset_from_args(args)
    report = calibrate_student(args.student, dataset, config)
    if args.format == "json":
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    cal = report.calibration
    fit = cal.params if cal.kind == "logistic" else {}
    print(f"calibration: {cal.kind}" + (f" ({fit.get('kind')}, converged={fit.get('converged')})" if fit else "")
          + f" -> {args.student}/calibration.json")
    if fit and fit.get("fallback"):
        print(f"  note: the logistic fit fell back to {fit['fallback']}")
    if fit and fit.get("note"):
        print(f"  note: {fit['note']}")
    print(f"  scale {list(cal.scale) if cal.scale else None}, higher_is_better={cal.higher_is_better}")
    print(f"  fitted on {report.n_calibration} labelled image(s): SRCC {report.calibration_fit['srcc']:.4f}  "
          f"PLCC {report.calibration_fit['plcc']:.4f}  RMSE {report.calibration_fit['rmse']:.4f}")
    h = report.heldout
    print(f"  held-out {report.n_heldout} image(s):     SRCC {h['srcc']:.4f}  PLCC {h['plcc']:.4f}  RMSE {h['rmse']:.4f}")
    if report.n_failed:
        print(f"  {report.n_failed} image(s) could not be scored by the student (left out)")
    subset = report.extra.get("subset") or {}
    print(f"  calibration subset drawn by {subset.get('by', 'image')}")
    for warning in report.extra.get("warnings", []):
        print(f"lmmiqa distill calibrate: warning: {warning}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- info


def _register_info(dsub: Any) -> None:
    p = dsub.add_parser("info", help="describe a student folder (config, calibration, teacher)",
                        description="Describe a student folder: a few lines, or its whole description as JSON.")
    p.add_argument("student", metavar="STUDENT", help="student folder")
    p.add_argument("--format", choices=SUMMARY_FORMATS, default="text",
                   help="text (default: a few lines) or json (everything: preprocessing, calibration parameters and "
                   "its held-out report, teacher, fidelity)")
    p.set_defaults(func=run_info)


def info_text(d: dict[str, Any]) -> str:
    """A few lines describing a student folder (:meth:`StudentArtifact.summary`)."""
    pre = d.get("preprocessing") or {}
    view, size = pre.get("mode") or "?", pre.get("size")
    if view == "crops":
        view = f"the mean of {pre.get('crops', '?')} crops ({pre.get('crop_layout', 'grid')}) of {size}x{size}"
    elif size:
        view = f"{view} {size}x{size}"
    lines = [f"{d['path']}: student {d['student']} (schema {d.get('schema_version')}), input: {view}"]
    teacher = d.get("teacher") or {}
    if teacher:
        model = teacher.get("model") or (teacher.get("options") or {}).get("model")
        lines.append(f"  teacher: {teacher.get('method', '?')}" + (f" ({model})" if model else ""))
    fid = d.get("fidelity") or {}
    if fid.get("val_srcc") is not None:
        lines.append(f"  fidelity to the teacher: SRCC {fid['val_srcc']:+.3f} on {fid.get('n_val')} held-out image(s)")
    cal = d.get("calibration")
    if cal:
        scale = cal.get("scale")
        held = ((d.get("calibration_report") or {}).get("heldout") or {})
        lines.append(f"  calibrated ({cal.get('kind')}) to {list(scale) if scale else 'no fixed scale'}, "
                     + ("higher" if cal.get("higher_is_better", True) else "lower") + " is better"
                     + (f"; held-out SRCC {held['srcc']:.4f}, PLCC {held['plcc']:.4f}"
                        if isinstance(held.get("srcc"), float) and isinstance(held.get("plcc"), float) else ""))
    else:
        lines.append("  not calibrated: scores are the raw output in the teacher's unit (`lmmiqa distill calibrate`)")
    lines.append("  everything: --format json")
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    from lmmiqa.distill.artifact import StudentArtifact

    summary = StudentArtifact.load(args.student).summary()
    print(json.dumps(summary, indent=2) if args.format == "json" else info_text(summary))
    return 0
