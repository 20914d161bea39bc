"""LEAF benchmark (not a test): student speed vs its teachers, and accuracy vs the number of calibration labels.

1. **Accuracy** (METHODS §3, offline): a synthetic distortion ladder (built-in photos, several crops per photo
   so there are enough distinct contents; blur, motion blur, noise, JPEG, pixelation; 5 severities; pseudo-MOS
   from the severity) is split by reference image (seeded 80/20). A classical tool (BRISQUE by default) teaches
   the ``small-cnn`` student on the *train* references only (``distill teach`` + ``distill train``: no MOS used),
   and both are measured on the held-out *test* references: SRCC of the raw outputs, then PLCC/SRCC after a
   logistic calibration fitted on n labelled train images, n ∈ {10, 50, 200, all}, median over seeds (a draw
   whose labels rank against the outputs gets no increasing map: counted as refused, left out of the median).
   The teacher calibrated with the same labels is the reference line.
2. **Speed** (CPU): images/s of the student (the trained small-cnn, and random-weight small-cnn@128 and
   ConvNeXt-Tiny@224 artifacts: speed does not depend on weight values) against its teachers: a tiny random-weight
   MLLM ``q-align`` from :mod:`lmmiqa.testing` and the classical tool, on the same image files, interleaved
   repeats, medians; plus GFLOP per image of every torch model (``FlopCounterMode``). The tiny MLLM has 2 layers
   of width 64, so it is *not* representative of a real teacher: Qwen3-VL-8B ``q-align`` costs ~3943 GFLOP per
   448² image (computed by ``gpu_throughput.py --analytic``), to compare with the students' GFLOP/img.

Writes ``leaf.md`` (tables), ``leaf.json`` and ``leaf_labels.png`` (accuracy vs labels) to ``--results``.

    python benchmarks/bench_leaf.py [--results DIR] [--teacher brisque] [--size 96] [--crops 4] [--epochs 15]
    python benchmarks/bench_leaf.py --quick      # a minute-long smoke run
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


def _crops(n_crops: int) -> list[tuple[str, Any]]:
    """Built-in photos, each cut into ``n_crops`` square crops (distinct contents for the ladder)."""
    from lmmiqa.data.synth import builtin_images

    out = []
    for name, img in builtin_images():
        w, h = img.size
        side = min(w, h) // 2 if n_crops > 1 else min(w, h)
        rng = np.random.default_rng(zlib.crc32(name.encode()))  # stable across processes (unlike hash())
        for k in range(n_crops):
            x0 = int(rng.integers(0, w - side + 1))
            y0 = int(rng.integers(0, h - side + 1))
            out.append((f"{name}-{k}", img.crop((x0, y0, x0 + side, y0 + side))))
    return out


def _score(method: str, paths: list[str], **opts: Any) -> np.ndarray:
    import lmmiqa

    res = lmmiqa.score(paths, method=method, **opts)
    return np.array([r.score if r.ok else np.nan for r in res], dtype=np.float64), res


def accuracy(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from lmmiqa.data.synth import make_ladder
    from lmmiqa.distill.calibrate import choose_subset, fit_calibration, fit_metrics
    from lmmiqa.distill.teacher import TeacherConfig, teach
    from lmmiqa.distill.train import TrainConfig, train_student
    from lmmiqa.errors import DataError
    from lmmiqa.evaluation.correlation import srcc

    t0 = time.perf_counter()
    ladder = make_ladder(work / "ladder", images=_crops(args.crops), size=args.size, severities=5, types=TYPES)
    train, test = ladder.select("seed:0:train"), ladder.select("seed:0:test")
    print(f"ladder: {len(ladder)} images ({len(train)} train / {len(test)} test, split by reference) "
          f"in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

    t0 = time.perf_counter()
    summary = teach(train.paths(), work / "teach", TeacherConfig(method=args.teacher, pairs=4 * len(train)))
    t_teach = time.perf_counter() - t0
    t0 = time.perf_counter()
    train_student(work / "teach", work / "student",
                  TrainConfig(student="small-cnn", image_size=args.size, batch_size=16, epochs=args.epochs, seed=0,
                              progress=sys.stderr.isatty()))
    t_train = time.perf_counter() - t0
    print(f"teach {t_teach:.1f}s, train {t_train:.1f}s", file=sys.stderr)

    sign = -1.0 if summary.negated else 1.0
    teacher_train, _ = _score(args.teacher, train.paths())
    teacher_test, _ = _score(args.teacher, test.paths())
    student_train, _ = _score("leaf", train.paths(), student=str(work / "student"))
    student_test, _ = _score("leaf", test.paths(), student=str(work / "student"))
    teacher_train, teacher_test = sign * teacher_train, sign * teacher_test
    y_train, y_test = train.scores(), test.scores()

    rows = []
    for n in [*[k for k in (10, 50, 200) if k < len(train)], len(train)]:
        seeds = range(args.seeds) if n < len(train) else range(1)
        per: dict[str, list[float]] = {"student_plcc": [], "student_srcc": [], "teacher_plcc": [], "teacher_srcc": []}
        refused = {"student": 0, "teacher": 0}
        for seed in seeds:
            idx = choose_subset(len(train), count=n, seed=seed)
            for who, x_tr, x_te in (("student", student_train, student_test), ("teacher", teacher_train, teacher_test)):
                try:
                    cal = fit_calibration(x_tr[idx], y_train[idx], "logistic", scale=(1.0, 5.0))
                except DataError:  # the labelled subset ranks against the outputs: no increasing map (counted)
                    refused[who] += 1
                    continue
                m = fit_metrics(cal.apply(x_te), y_test)
                per[f"{who}_plcc"].append(m["plcc"])
                per[f"{who}_srcc"].append(m["srcc"])
        med = {k: float(np.median(v)) if v else float("nan") for k, v in per.items()}
        sp = per["student_plcc"]
        rows.append({"labels": n, "seeds": len(seeds), "refused": refused, **med,
                     "student_plcc_range": [float(min(sp)), float(max(sp))] if sp else [float("nan")] * 2})
    return {
        "teacher": args.teacher,
        "n_train": len(train), "n_test": len(test), "size": args.size, "types": TYPES, "epochs": args.epochs,
        "teach_seconds": t_teach, "train_seconds": t_train,
        "raw_test_srcc": {"teacher": srcc(teacher_test, y_test), "student": srcc(student_test, y_test)},
        "raw_train_srcc": {"teacher": srcc(teacher_train, y_train), "student": srcc(student_train, y_train)},
        "fidelity_test_srcc": srcc(student_test, teacher_test),
        "calibration": rows,
    }


def _random_artifact(folder: Path, student: str, size: int) -> Path:
    """A student artifact with random weights (for speed only)."""
    import torch

    from lmmiqa.distill.artifact import save_artifact
    from lmmiqa.distill.students import build_network, get_student

    spec = get_student(student)
    arch = spec.arch(pretrained=False, source=None)
    torch.manual_seed(0)
    net = build_network(spec, arch, None)
    save_artifact(folder, net.state_dict(), student=spec.name, arch=arch,
                  preprocess=spec.preprocessing(size=size, pretrained=False, source=None), k_levels=None, levels=None,
                  output={"target_mean": 0.0, "target_std": 1.0}, teacher={"note": "random weights, speed only"},
                  training={})
    return folder


def speed(args: argparse.Namespace, work: Path, trained: Path | None) -> dict[str, Any]:
    import lmmiqa
    from lmmiqa.testing import make_image, make_tiny_vlm

    folder = work / "speed"
    folder.mkdir(exist_ok=True)
    paths = []
    for i in range(args.n_speed):
        p = folder / f"img{i:03d}.png"
        make_image(args.speed_size, args.speed_size, seed=i).save(p)
        paths.append(str(p))
    vlm = make_tiny_vlm("qwen2_5_vl", work / "tiny-vlm")
    scorers: dict[str, tuple[Any, int]] = {
        "teacher q-align (tiny MLLM)": (lmmiqa.create_scorer("q-align", model=str(vlm), device="cpu"), 8),
        f"teacher {args.teacher}": (lmmiqa.create_scorer(args.teacher), 32),
    }
    if trained is not None:
        scorers[f"student small-cnn@{args.size} (trained)"] = (
            lmmiqa.create_scorer("leaf", student=str(trained), device="cpu"), 32)
    scorers["student small-cnn@128"] = (
        lmmiqa.create_scorer("leaf", student=str(_random_artifact(work / "rand-small", "small-cnn", 128)), device="cpu"), 32)
    if not args.quick:
        scorers["student convnext-tiny@224"] = (
            lmmiqa.create_scorer("leaf", student=str(_random_artifact(work / "rand-cnxt", "convnext-tiny", 224)),
                                 device="cpu"), 32)
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
    """GFLOP of one image's forward pass counted by torch's FlopCounterMode (None for numpy tools)."""
    if getattr(scorer, "name", "") not in ("q-align", "leaf"):
        return None
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        scorer.score([path], batch_size=1)
    return counter.get_total_flops() / 1e9


def _threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _table(acc: dict[str, Any] | None, spd: dict[str, Any] | None, teacher: str) -> str:
    lines = []
    if acc:
        lines += [
            f"Ladder: {acc['n_train']} train / {acc['n_test']} test images ({acc['size']}², {', '.join(acc['types'])}; "
            f"split by reference). Student small-cnn, {acc['epochs']} epochs, taught by {teacher} on the train part "
            f"only (teach {acc['teach_seconds']:.0f}s, train {acc['train_seconds']:.0f}s).",
            "",
            "| held-out test, raw output | SRCC |",
            "|---|---:|",
            f"| teacher {teacher} | {acc['raw_test_srcc']['teacher']:.3f} |",
            f"| student small-cnn | {acc['raw_test_srcc']['student']:.3f} |",
            f"| student vs teacher (fidelity) | {acc['fidelity_test_srcc']:.3f} |",
            "",
            "| calibration labels | seeds | student SRCC | student PLCC (min–max) | teacher SRCC | teacher PLCC | "
            "fits refused (student/teacher) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in acc["calibration"]:
            lo, hi = r["student_plcc_range"]
            lines.append(f"| {r['labels']} | {r['seeds']} | {r['student_srcc']:.3f} | {r['student_plcc']:.3f} "
                         f"({lo:.3f}–{hi:.3f}) | {r['teacher_srcc']:.3f} | {r['teacher_plcc']:.3f} | "
                         f"{r['refused']['student']}/{r['refused']['teacher']} |")
        lines.append("")
    if spd:
        base = spd["images_per_s"]
        teachers = {k: v for k, v in base.items() if k.startswith("teacher")}
        lines += [
            f"Speed: {spd['n_images']} PNG files of {spd['image_size']}², CPU ({spd['threads']} threads), median of "
            f"{spd['repeats']} interleaved repeats, decoding included.",
            "",
            "| scorer | images/s | GFLOP/img | " + " | ".join(f"× {k.removeprefix('teacher ')}" for k in teachers) + " |",
            "|---|---:|---:|" + "---:|" * len(teachers),
        ]
        for name, ips in base.items():
            ratios = " | ".join(f"{ips / t:.1f}" for t in teachers.values())
            gf = spd["gflop_per_image"].get(name)
            lines.append(f"| {name} | {ips:.1f} | {'-' if gf is None else f'{gf:.3g}'} | {ratios} |")
    return "\n".join(lines) + "\n"


def _plot(acc: dict[str, Any], path: Path, teacher: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = acc["calibration"]
    n = [r["labels"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=120)
    ax.plot(n, [r["student_plcc"] for r in rows], "o-", label="student PLCC")
    ax.plot(n, [r["student_srcc"] for r in rows], "s--", label="student SRCC")
    ax.plot(n, [r["teacher_plcc"] for r in rows], "o-", alpha=0.6, label=f"{teacher} PLCC")
    ax.plot(n, [r["teacher_srcc"] for r in rows], "s--", alpha=0.6, label=f"{teacher} SRCC")
    lo = [r["student_plcc_range"][0] for r in rows]
    hi = [r["student_plcc_range"][1] for r in rows]
    ax.fill_between(n, lo, hi, alpha=0.15, label="student PLCC, min–max over seeds")
    ax.set_xscale("log")
    ax.set_xlabel("calibration labels (log scale)")
    ax.set_ylabel("held-out correlation")
    ax.set_title(f"LEAF small-cnn taught by {teacher} (synthetic ladder)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="bench_leaf_results", help="output folder (default ./bench_leaf_results)")
    ap.add_argument("--teacher", default="brisque", help="classical teacher method (default brisque)")
    ap.add_argument("--size", type=int, default=96, help="ladder image side (default 96)")
    ap.add_argument("--crops", type=int, default=4, help="crops per built-in photo (default 4)")
    ap.add_argument("--epochs", type=int, default=15, help="student epochs (default 15)")
    ap.add_argument("--seeds", type=int, default=5, help="calibration subsets per label count (default 5)")
    ap.add_argument("--n-speed", type=int, default=64, help="images in the speed test (default 64)")
    ap.add_argument("--speed-size", type=int, default=256, help="side of the speed-test images (default 256)")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (default 3)")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--quick", action="store_true", help="small smoke run (64² images, 1 crop, 3 epochs, 16 speed images)")
    args = ap.parse_args()
    if args.quick:
        args.size, args.crops, args.epochs, args.seeds, args.n_speed, args.repeats = 64, 1, 3, 2, 16, 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-leaf-") as tmp:
        work = Path(tmp)
        acc = None if args.skip_accuracy else accuracy(args, work)
        spd = None if args.skip_speed else speed(args, work, None if acc is None else work / "student")
    table = _table(acc, spd, args.teacher)
    print(table)
    (results / "leaf.md").write_text(table, encoding="utf-8")
    (results / "leaf.json").write_text(json.dumps({"accuracy": acc, "speed": spd}, indent=2) + "\n", encoding="utf-8")
    if acc:
        _plot(acc, results / "leaf_labels.png", args.teacher)
    print(f"written to {results}/ (leaf.md, leaf.json{', leaf_labels.png' if acc else ''})", file=sys.stderr)


if __name__ == "__main__":
    main()
