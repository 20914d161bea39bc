"""LEAF benchmark (not a test): does a student generalize like its teacher on held-out images, and how fast is it?

1. **Held-out generalization** (METHODS §3, offline). Synthetic distortion ladders (built-in photos, several
   square crops per photo; blur, motion blur, noise, JPEG, pixelation; 5 severities; pseudo-MOS from the severity)
   at 96², 256² and 512². The split is by *photo*: the crops of 2 of the 7 built-in photos (seeded) are held out,
   so test images share no content with the training images. Each teacher (classical tools and a tiny
   random-weight MLLM ``q-align``) judges the *train* part only (``distill teach``, derived or prompted pairs), a
   student is distilled from it (``distill train``; no MOS used), and on the held-out photos we report the SRCC of
   teacher and student against the pseudo-MOS, their gap (target: student within 0.05 of its teacher) and the
   student's fidelity (SRCC student vs teacher).
2. **Input views** (256², BRISQUE): the same student with whole-image ``resize`` vs native-resolution ``crops``
   (what the defaults were chosen from).
3. **Calibration labels** (256², BRISQUE, crops): PLCC/SRCC on the held-out photos after a logistic calibration
   fitted on n labelled train images, n ∈ {10, 50, 200, all}, median over seeds; the teacher calibrated with the
   same labels is the reference line.
4. **Speed** (CPU): images/s of the student artifacts (trained small-cnn with its crops; random-weight
   ConvNeXt-Tiny@224: speed does not depend on weight values) against the teachers on the same files (512²),
   interleaved repeats, medians; plus GFLOP per image of every torch model (``FlopCounterMode``). The tiny MLLM
   (2 layers of width 64) is *not* a real teacher: for the MLLM setting the ratio that counts is computed from
   FLOPs, against Qwen3-VL-8B ``q-align`` at ~3943 GFLOP per 448² image (``gpu_throughput.py --analytic``).

Writes ``leaf.md`` (tables), ``leaf.json``, ``leaf_heldout.png`` and ``leaf_labels.png`` to ``--results``.

    python benchmarks/bench_leaf.py [--results DIR] [--sizes 96 256 512] [--teachers brisque niqe q-align]
    python benchmarks/bench_leaf.py --quick      # a smoke run (one 96² ladder, brisque, 2 epochs)
    # the README's table: one process per ladder size, 1 torch thread each, then merged
    for s in 96 256 512; do python benchmarks/bench_leaf.py --sizes $s --threads 1 --results part$s & done; wait
    python benchmarks/bench_leaf.py --merge part*/leaf.json --results results
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

TYPES = ["gaussian_blur", "motion_blur", "gaussian_noise", "jpeg", "pixelate"]
#: Qwen3-VL-8B q-align, GFLOP per 448² image (benchmarks/gpu_throughput.py --analytic)
REAL_TEACHER_GFLOP = 3943.0
TEST_PHOTOS = 2


def _crops(n_crops: int, fraction: float = 0.6) -> list[tuple[str, Any]]:
    """Built-in photos, each cut into ``n_crops`` square crops of ``fraction`` of the shorter side."""
    from lmmiqa.data.synth import builtin_images

    out = []
    for name, img in builtin_images():
        w, h = img.size
        side = int(min(w, h) * fraction)
        rng = np.random.default_rng(zlib.crc32(name.encode()))  # stable across processes (unlike hash())
        for k in range(n_crops):
            x0 = int(rng.integers(0, w - side + 1))
            y0 = int(rng.integers(0, h - side + 1))
            out.append((f"{name}-{k}", img.crop((x0, y0, x0 + side, y0 + side))))
    return out


def _photo(item: Any) -> str:
    """The built-in photo an item was cut from (its reference is ``refs/<photo>-<k>.png``)."""
    return Path(str(item.ref_id)).stem.rsplit("-", 1)[0]


def ladder_split(size: int, crops: int, work: Path) -> tuple[Any, Any]:
    """The ladder at ``size``² split by photo: (train, test)."""
    from lmmiqa.data.splits import seeded_groups
    from lmmiqa.data.synth import make_ladder

    ds = make_ladder(work / f"ladder{size}", images=_crops(crops), size=size, severities=5, types=TYPES)
    photos = [_photo(it) for it in ds.items]
    test = seeded_groups(photos, 0, TEST_PHOTOS / len(set(photos)))
    mask = np.array([p in test for p in photos])
    return ds.subset(~mask, "train-photos"), ds.subset(mask, "held-out-photos")


def _score(method: str, paths: list[str], **opts: Any) -> np.ndarray:
    import lmmiqa

    res = lmmiqa.score(paths, method=method, **opts)
    bad = [r.error for r in res if not r.ok]
    if bad:
        raise RuntimeError(f"{method}: {len(bad)} failure(s), e.g. {bad[0]}")
    return np.array([r.score for r in res], dtype=np.float64)


def _teacher_options(teacher: str, work: Path) -> dict[str, Any]:
    if teacher != "q-align":
        return {}
    from lmmiqa.testing import make_tiny_vlm

    vlm = work / "tiny-vlm"
    if not vlm.exists():
        make_tiny_vlm("qwen2_5_vl", vlm)
    return {"model": str(vlm), "device": "cpu"}


def run_setting(train: Any, test: Any, teacher: str, size: int, args: argparse.Namespace, work: Path,
                mode: str = "crops") -> dict[str, Any]:
    """Teach on ``train``, distill, and measure teacher and student on ``test`` (and on ``train``)."""
    from lmmiqa.distill.teacher import TeacherConfig, teach
    from lmmiqa.distill.train import TrainConfig, train_student
    from lmmiqa.evaluation.correlation import srcc

    tag = f"{teacher}-{size}-{mode}"
    opts = _teacher_options(teacher, work)
    cache = work / f"teach-{teacher}-{size}"
    t0 = time.perf_counter()
    summary = teach(train.paths(), cache, TeacherConfig(method=teacher, options=opts, pairs=2 * len(train),
                                                        pair_mode="derived", batch_size=16))
    t_teach = time.perf_counter() - t0
    t0 = time.perf_counter()
    # crops mode: --crop / --n-crops when given, else None (the trainer picks them from the images' size)
    crop = args.crop if mode == "crops" else min(size, args.resize)
    n_crops = args.n_crops if mode == "crops" else None
    trained = train_student(cache, work / f"student-{tag}",
                            TrainConfig(student="small-cnn", image_size=crop, resize_mode=mode, crops=n_crops,
                                        batch_size=args.batch_size or None,
                                        epochs=args.epochs or None, seed=args.seed, val_fraction=0.0,
                                        progress=sys.stderr.isatty()))
    t_train = time.perf_counter() - t0
    views = dict(trained.views)
    crop = int(views["image_size"]) if views.get("image_size") is not None else crop
    sign = -1.0 if summary.negated else 1.0
    t_test = sign * _score(teacher, test.paths(), **opts)
    s_test = _score("leaf", test.paths(), student=str(work / f"student-{tag}"), device="cpu")
    y = test.scores()
    row = {
        "teacher": teacher, "size": size, "mode": mode, "crop": crop,
        "n_crops": int(views["crops"]) if mode == "crops" else 1,
        "auto_views": bool(views.get("auto_image_size") or views.get("auto_crops")) if mode == "crops" else False,
        "views": views, "n_train": len(train), "n_test": len(test), "epochs": trained.epochs,
        "batch_size": json.loads((work / f"student-{tag}" / "training.json").read_text(encoding="utf-8"))["batch_size"],
        "seed": args.seed,
        # where train time goes: epoch 1 also decodes every image into the bank; later epochs are crops + steps
        "epoch_seconds": [float(h["seconds"]) for h in trained.history],
        "teacher_srcc": srcc(t_test, y), "student_srcc": srcc(s_test, y), "fidelity": srcc(s_test, t_test),
        "teach_seconds": t_teach, "train_seconds": t_train,
        "student": str(work / f"student-{tag}"),
    }
    row["gap"] = row["teacher_srcc"] - row["student_srcc"]
    print(f"{tag}: teacher {row['teacher_srcc']:.3f} student {row['student_srcc']:.3f} fidelity "
          f"{row['fidelity']:.3f} (teach {t_teach:.0f}s, train {t_train:.0f}s)", file=sys.stderr)
    row["_arrays"] = {"t_test": t_test, "s_test": s_test, "y_test": y}
    return row


def calibration_rows(train: Any, row: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Held-out PLCC/SRCC after calibrating student and teacher on n labelled train images."""
    from lmmiqa.distill.calibrate import choose_subset, fit_calibration, fit_metrics
    from lmmiqa.errors import DataError

    sign = -1.0 if row["teacher"] in ("brisque", "niqe", "piqe") else 1.0
    t_train = sign * _score(row["teacher"], train.paths())
    s_train = _score("leaf", train.paths(), student=row["student"], device="cpu")
    a = row["_arrays"]
    y_train = train.scores()
    rows = []
    for n in [*[k for k in (10, 50, 200) if k < len(train)], len(train)]:
        seeds = range(args.seeds) if n < len(train) else range(1)
        per: dict[str, list[float]] = {"student_plcc": [], "student_srcc": [], "teacher_plcc": [], "teacher_srcc": []}
        refused = {"student": 0, "teacher": 0}
        for seed in seeds:
            idx = choose_subset(len(train), count=n, seed=seed)
            for who, x_tr, x_te in (("student", s_train, a["s_test"]), ("teacher", t_train, a["t_test"])):
                try:
                    cal = fit_calibration(x_tr[idx], y_train[idx], "logistic", scale=(1.0, 5.0))
                except DataError:  # the labelled subset ranks against the outputs: no increasing map (counted)
                    refused[who] += 1
                    continue
                m = fit_metrics(cal.apply(x_te), a["y_test"])
                per[f"{who}_plcc"].append(m["plcc"])
                per[f"{who}_srcc"].append(m["srcc"])
        med = {k: float(np.median(v)) if v else float("nan") for k, v in per.items()}
        sp = per["student_plcc"]
        rows.append({"labels": n, "seeds": len(seeds), "refused": refused, **med,
                     "student_plcc_range": [float(min(sp)), float(max(sp))] if sp else [float("nan")] * 2})
    return rows


def _random_artifact(folder: Path, student: str, size: int, mode: str = "resize", crops: int = 1) -> Path:
    """A student artifact with random weights (for speed only)."""
    import torch

    from lmmiqa.distill.artifact import save_artifact
    from lmmiqa.distill.students import build_network, get_student

    spec = get_student(student)
    arch = spec.arch(pretrained=False, source=None)
    torch.manual_seed(0)
    net = build_network(spec, arch, None)
    from dataclasses import replace

    pre = replace(spec.preprocessing(size=size, pretrained=False, source=None), mode=mode, crops=crops)
    save_artifact(folder, net.state_dict(), student=spec.name, arch=arch, preprocess=pre, k_levels=None, levels=None,
                  output={"target_mean": 0.0, "target_std": 1.0}, teacher={"note": "random weights, speed only"},
                  training={})
    return folder


def speed(args: argparse.Namespace, work: Path, trained: dict[str, Any] | None, teachers: list[str]) -> dict[str, Any]:
    import lmmiqa
    from lmmiqa.testing import make_image

    folder = work / "speed"
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(args.n_speed):
        p = folder / f"img{i:03d}.png"
        make_image(args.speed_size, args.speed_size, seed=i).save(p)
        paths.append(str(p))
    scorers: dict[str, tuple[Any, int]] = {}
    for t in teachers:
        name = "teacher q-align (tiny MLLM)" if t == "q-align" else f"teacher {t}"
        scorers[name] = (lmmiqa.create_scorer(t, **_teacher_options(t, work)), 8 if t == "q-align" else 32)
    if trained is not None:
        scorers[f"student small-cnn crops {trained['n_crops']}x{trained['crop']}² (trained)"] = (
            lmmiqa.create_scorer("leaf", student=trained["student"], device="cpu"), 32)
    if not args.quick:
        scorers["student convnext-tiny crops 4x224² (random weights)"] = (
            lmmiqa.create_scorer("leaf", student=str(_random_artifact(work / "rand-cnxt", "convnext-tiny", 224,
                                                                      "crops", 4)), device="cpu"), 32)
    for scorer, bs in scorers.values():  # warm-up (model load, first forward)
        scorer.score(paths[:bs], batch_size=bs)
    times: dict[str, list[float]] = {k: [] for k in scorers}
    for _ in range(args.repeats):
        for name, (scorer, bs) in scorers.items():
            t0 = time.perf_counter()
            res = scorer.score(paths, batch_size=bs)
            times[name].append(time.perf_counter() - t0)
            bad = [r.error for r in res if not r.ok]
            if bad:
                raise RuntimeError(f"{name}: {len(bad)} failure(s), e.g. {bad[0]}")
    out = {name: len(paths) / statistics.median(ts) for name, ts in times.items()}
    flops = {name: _gflop_per_image(scorer, paths[0]) for name, (scorer, _) in scorers.items()}
    return {"n_images": len(paths), "image_size": args.speed_size, "repeats": args.repeats,
            "threads": _threads(), "images_per_s": out, "gflop_per_image": flops}


def _gflop_per_image(scorer: Any, path: str) -> float | None:
    """GFLOP of one image's forward pass(es) counted by torch's FlopCounterMode (None for numpy tools)."""
    if getattr(scorer, "name", "") not in ("q-align", "leaf"):
        return None
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        scorer.score([path], batch_size=1)
    return counter.get_total_flops() / 1e9


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _table(res: dict[str, Any]) -> str:
    lines = []
    held = res.get("heldout") or []
    if held:
        r0 = held[0]
        lines += [
            f"Held-out photos: ladders of {r0['n_train']} train / {r0['n_test']} test images (2 of 7 photos held out, "
            f"{', '.join(TYPES)}; 5 severities). Student small-cnn (8-16-32-64); teachers judge "
            "the train part only (pairs derived from their scores).",
            "",
            "| ladder | teacher | student input | epochs / batch | teacher SRCC | student SRCC | gap (target ≤ 0.05) "
            "| fidelity (student vs teacher) | teach s | train s |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in held:
            view = f"{r['n_crops']} crops of {r['crop']}²" if r["mode"] == "crops" else f"resize to {r['crop']}²"
            view += " (auto)" if r.get("auto_views") else ""
            view += f", seed {r['seed']}" if r.get("seed") else ""
            ok = "✓" if r["gap"] <= 0.05 else "✗"
            lines.append(f"| {r['size']}² | {r['teacher']} | {view} | {r['epochs']} / {r.get('batch_size', 16)} | "
                         f"{r['teacher_srcc']:.3f} | {r['student_srcc']:.3f} | "
                         f"{r['gap']:+.3f} {ok} | {r['fidelity']:.3f} | {r['teach_seconds']:.0f} | "
                         f"{r['train_seconds']:.0f} |")
        lines.append("")
    cal = res.get("calibration")
    if cal:
        lines += [
            f"Calibration labels ({cal['setting']}): held-out photos after a logistic map fitted on n train labels.",
            "",
            "| calibration labels | seeds | student SRCC | student PLCC (min–max) | teacher SRCC | teacher PLCC | "
            "fits refused (student/teacher) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in cal["rows"]:
            lo, hi = r["student_plcc_range"]
            lines.append(f"| {r['labels']} | {r['seeds']} | {r['student_srcc']:.3f} | {r['student_plcc']:.3f} "
                         f"({lo:.3f}–{hi:.3f}) | {r['teacher_srcc']:.3f} | {r['teacher_plcc']:.3f} | "
                         f"{r['refused']['student']}/{r['refused']['teacher']} |")
        lines.append("")
    spd = res.get("speed")
    if spd:
        base = spd["images_per_s"]
        teachers = {k: v for k, v in base.items() if k.startswith("teacher")}
        lines += [
            f"Speed: {spd['n_images']} PNG files of {spd['image_size']}², CPU ({spd['threads']} torch thread(s), shared and "
            f"loaded machine), median of {spd['repeats']} interleaved repeats, decoding included. Last column: "
            f"Qwen3-VL-8B q-align ({REAL_TEACHER_GFLOP:.0f} GFLOP/img) ÷ the student's GFLOP/img.",
            "",
            "| scorer | images/s | GFLOP/img | " + " | ".join(f"× {k.removeprefix('teacher ')}" for k in teachers)
            + " | × 8B teacher (FLOPs) |",
            "|---|---:|---:|" + "---:|" * len(teachers) + "---:|",
        ]
        for name, ips in base.items():
            ratios = " | ".join(f"{ips / t:.1f}" for t in teachers.values())
            gf = spd["gflop_per_image"].get(name)
            flop_ratio = f"{REAL_TEACHER_GFLOP / gf:.0f}" if gf and name.startswith("student") else "-"
            lines.append(f"| {name} | {ips:.1f} | {'-' if gf is None else f'{gf:.3g}'} | {ratios} | {flop_ratio} |")
    return "\n".join(lines) + "\n"


def _plot_heldout(held: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = held
    labels = [f"{r['teacher']} {r['size']}²\n" + (f"{r['crop']}² crops" if r["mode"] == "crops" else "resize")
              + f"\n{r['epochs']} ep" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(5.5, 0.9 * len(rows)), 3.6), dpi=120)
    ax.bar(x - 0.2, [r["teacher_srcc"] for r in rows], 0.4, label="teacher SRCC (pseudo-MOS)")
    ax.bar(x + 0.2, [r["student_srcc"] for r in rows], 0.4, label="student SRCC (pseudo-MOS)")
    ax.plot(x, [r["fidelity"] for r in rows], "k^", label="fidelity (student vs teacher)")
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("SRCC on held-out photos")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_title("LEAF small-cnn vs its teacher on held-out photos (synthetic ladders)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_labels(cal: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = cal["rows"]
    n = [r["labels"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.plot(n, [r["student_plcc"] for r in rows], "o-", label="student PLCC")
    ax.plot(n, [r["student_srcc"] for r in rows], "s--", label="student SRCC")
    ax.plot(n, [r["teacher_plcc"] for r in rows], "o-", alpha=0.6, label="teacher PLCC")
    ax.plot(n, [r["teacher_srcc"] for r in rows], "s--", alpha=0.6, label="teacher SRCC")
    ax.fill_between(n, [r["student_plcc_range"][0] for r in rows], [r["student_plcc_range"][1] for r in rows],
                    alpha=0.15, label="student PLCC, min–max over seeds")
    ax.set_xscale("log")
    ax.set_xlabel("calibration labels (log scale)")
    ax.set_ylabel("held-out correlation")
    ax.set_title(f"LEAF calibration ({cal['setting']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="bench_leaf_results", help="output folder (default ./bench_leaf_results)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[96, 256, 512], help="ladder sides (default 96 256 512)")
    ap.add_argument("--teachers", nargs="+", default=["brisque", "niqe", "q-align"],
                    help="teachers (default brisque niqe q-align; q-align is the tiny random-weight MLLM)")
    ap.add_argument("--crops", type=int, default=2, help="crops per built-in photo in the ladder (default 2)")
    ap.add_argument("--crop", type=int, default=None,
                    help="student crop side (default: chosen by distill train from the images' size)")
    ap.add_argument("--n-crops", type=int, default=None,
                    help="student inference crops (default: chosen by distill train, enough to tile the image)")
    ap.add_argument("--resize", type=int, default=128,
                    help="side of the whole-image resize comparison (default 128, small-cnn's resize default)")
    ap.add_argument("--epochs", type=int, default=0,
                    help="student epochs (default 0: distill train's own, ~640 optimizer steps: 20 on a 250-image "
                    "ladder)")
    ap.add_argument("--batch-size", type=int, default=0,
                    help="student batch size (default 0: distill train's own, 8 on a small cache)")
    ap.add_argument("--seed", type=int, default=0, help="student training seed (default 0)")
    ap.add_argument("--seeds", type=int, default=5, help="calibration subsets per label count (default 5)")
    ap.add_argument("--n-speed", type=int, default=64, help="images in the speed test (default 64)")
    ap.add_argument("--speed-size", type=int, default=512, help="side of the speed-test images (default 512)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    ap.add_argument("--speed-teachers", nargs="+", default=None,
                    help="teachers timed in the speed test (default: --teachers)")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-resize", action="store_true", help="skip the resize-vs-crops comparison")
    ap.add_argument("--skip-calibration", action="store_true", help="skip the calibration-labels table")
    ap.add_argument("--quick", action="store_true", help="smoke run (96² ladder, brisque, 2 epochs, 16 speed images)")
    ap.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                    help="only build the report from leaf.json files of runs over parts (e.g. one process per "
                    "--sizes value) into --results")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, Path(args.results))
        return
    if args.threads:
        import torch

        torch.set_num_threads(int(args.threads))
    from lmmiqa.errors import DataError

    if args.quick:
        args.sizes, args.teachers, args.crops, args.epochs, args.seeds = [96], ["brisque"], 2, 2, 2
        args.n_speed, args.repeats, args.skip_resize = 16, 1, True
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    shared = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "params"
    if "LMMIQA_ASSETS" not in os.environ and shared.is_dir():
        os.environ["LMMIQA_ASSETS"] = str(shared.resolve())
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    res: dict[str, Any] = {"args": {k: v for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="bench-leaf-") as tmp:
        work = Path(tmp)
        held: list[dict[str, Any]] = []
        main_row = None
        for size in args.sizes:
            train, test = ladder_split(size, args.crops, work)
            for teacher in args.teachers:
                try:
                    row = run_setting(train, test, teacher, size, args, work)
                except DataError as err:  # e.g. NIQE cannot score 96² images: skip the setting, say so
                    print(f"{teacher}-{size}: skipped ({err})", file=sys.stderr)
                    res.setdefault("skipped", []).append({"teacher": teacher, "size": size, "reason": str(err)})
                    continue
                held.append(row)
                if teacher == args.teachers[0] and (main_row is None or size == 256):
                    main_row, main_train = row, train
            if size == 256 and not args.skip_resize:
                r = run_setting(train, test, args.teachers[0], size, args, work, mode="resize")
                r["main"] = True
                held.append(r)
        if main_row is not None and not args.skip_calibration:
            res["calibration"] = {"setting": f"{main_row['teacher']}, {main_row['size']}², crops",
                                  "rows": calibration_rows(main_train, main_row, args)}
        res["heldout"] = [{k: v for k, v in r.items() if k not in ("_arrays", "student")} for r in held]
        if not args.skip_speed:
            res["speed"] = speed(args, work, main_row, args.speed_teachers or args.teachers)
    res["seconds"] = time.perf_counter() - t_all
    write_report(res, results)


def write_report(res: dict[str, Any], results: Path) -> None:
    """``leaf.md``, ``leaf.json`` and the plots into ``results``."""
    results.mkdir(parents=True, exist_ok=True)
    table = _table(res) + f"\nBenchmark time: {res['seconds'] / 60:.1f} min" + (
        f" (parts run in parallel: {', '.join(f'{s / 60:.1f}' for s in res['part_seconds'])} min)"
        if res.get("part_seconds") else "") + ".\n"
    print(table)
    (results / "leaf.md").write_text(table, encoding="utf-8")
    (results / "leaf.json").write_text(json.dumps(res, indent=2, default=float) + "\n", encoding="utf-8")
    if res.get("heldout"):
        _plot_heldout(res["heldout"], results / "leaf_heldout.png")
    if res.get("calibration"):
        _plot_labels(res["calibration"], results / "leaf_labels.png")
    print(f"written to {results}/", file=sys.stderr)


def merge(files: list[str], results: Path) -> None:
    """One report from the ``leaf.json`` of several partial runs (held-out rows by ladder size; the calibration
    table of the run that has the 256² ladder, else the first; the first speed table)."""
    parts = [json.loads(Path(f).read_text(encoding="utf-8")) for f in files]
    held = sorted((r for p in parts for r in p.get("heldout", [])), key=lambda r: (r["size"], r["mode"] != "crops", r["epochs"], r["crop"]))
    cals = [p["calibration"] for p in parts if p.get("calibration")]
    cal = next((c for c in cals if "256" in c["setting"]), cals[0] if cals else None)
    spd = next((p["speed"] for p in parts if p.get("speed")), None)
    # a part that is itself a merge contributes its own parts' times
    secs = [float(s) for p in parts for s in (p.get("part_seconds") or [p.get("seconds", 0.0)])]
    write_report({"args": [p.get("args") for p in parts], "heldout": held, "calibration": cal, "speed": spd,
                  "seconds": max(secs), "part_seconds": secs}, results)


if __name__ == "__main__":
    main()
