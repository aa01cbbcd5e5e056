"""Choose the U-Net detector's post-processing on real stroma that the networks choosing it never saw.

Usage::

    python bench/choose_unet_postprocessing.py --work /tmp/unet_folds [--stage1 PATH] [--json]

How ``detect.DIST_SMOOTH`` and ``detect.GROW`` were chosen (bench/RESULTS.md, "Post-processing chosen on
unseen stroma"). Settings chosen on the shipped network's own training rows do not carry over to unseen
rows (the network fits its training rows, where growth and lower thresholds over-grow), so here:

1. Two networks are trained as stage 2 of ``ingest/weights/train_unet_he.py`` (from ``--stage1``, the
   recipe's first stage; trained here when not given), each with only one half of the stromal image's
   training rows: A with rows 500-1000, B with rows 0-500 (2.5 minutes each on 2 idle cores). They are
   kept in ``--work`` and reused on a second run.
2. Their maps (with the detector's test-time augmentation) on the half each did not see are the
   validation set. The shipped network's maps on the nest's training rows guard the nest.
3. Every setting of the grid is scored; the rule, fixed before any run: maximise the worst of
   ``F1@6 - 0.80`` and ``AJI - 0.55`` over the validation halves (their mean) and the nest's training rows.
4. Only then the held-out rows y >= 1000 of both images are scored with the shipped network, for the
   default and the chosen setting. No network and no choice used them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ingest" / "weights"))

import train_unet_he  # noqa: E402  (the shipped weights' recipe, beside them)
from bench_detect_real import HOLDOUT_ROW, real_images, score  # noqa: E402

from nucleograph.ingest import detect  # noqa: E402
from nucleograph.ingest.detect import unet_instances  # noqa: E402
from nucleograph.ingest.unet import load_unet, predict_maps  # noqa: E402

#: (name, stroma rows trained on, stroma rows validated on)
FOLDS = (("A", (500, HOLDOUT_ROW), (0, 500)), ("B", (0, 500), (500, HOLDOUT_ROW)))
GRID = {"threshold": (0.4, 0.5, 0.6), "sigma": (2.0, 3.0, 4.0), "core": (0.3, 0.4, 0.5), "grow": (None, 0.2, 0.3, 0.4)}


def train_fold(out: Path, stage1: Path, rows: tuple[int, int]) -> None:
    """Stage 2 of the recipe (its README's command) with only ``rows`` of the stromal image."""
    train_unet_he.main([
        "--init", str(stage1), "--with-stroma", "--stroma-rows", str(rows[0]), str(rows[1]),
        "--epochs", "12", "--lr", "1.5e-3", "--out", str(out),
    ])


def post(prob, dist, *, threshold, sigma, core, grow) -> np.ndarray:
    """``detect_nuclei``'s U-Net post-processing with these settings."""
    return unet_instances(prob, dist, threshold=threshold, core=core, dist_smooth=sigma, grow=grow)


def _scores(true, labels, image) -> dict:
    s = score(true, labels, image)
    return {"f1_6": s["f1_6"], "aji": s["aji"], "count_ratio": s["count_ratio"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="folder for the fold networks (reused when present)")
    ap.add_argument("--stage1", type=Path, help="the recipe's stage-1 network (default: trained into --work)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    args.work.mkdir(parents=True, exist_ok=True)
    stage1 = args.stage1 or args.work / "stage1.pt"
    if not stage1.is_file():
        train_unet_he.main(["--out", str(stage1)])
    images = {item["name"]: item for item in real_images() if item["true"] is not None}
    if {"hgsc_nest", "hgsc_stroma"} - set(images):
        sys.exit("the histolytics wheel is not installed: run `make test-data`")
    stroma, nest = images["hgsc_stroma"], images["hgsc_nest"]
    tta = detect.DEFAULT_TTA
    validation = []
    for name, trained, unseen in FOLDS:
        path = args.work / f"fold{name}.pt"
        if not path.is_file():
            train_fold(path, stage1, trained)
        validation.append((predict_maps(load_unet(path), stroma["image"], tta=tta), np.s_[unseen[0] : unseen[1]]))
    shipped = load_unet()
    nest_maps, stroma_maps = predict_maps(shipped, nest["image"], tta=tta), predict_maps(shipped, stroma["image"], tta=tta)

    top = np.s_[:HOLDOUT_ROW]
    rows = []
    for values in itertools.product(*GRID.values()):
        setting = dict(zip(GRID, values, strict=True))
        halves = [
            _scores(stroma["true"][r], post(p[r], d[r], **setting), stroma["image"][r]) for (p, d), r in validation
        ]
        val = {k: float(np.mean([h[k] for h in halves])) for k in halves[0]}
        guard = _scores(nest["true"][top], post(nest_maps[0][top], nest_maps[1][top], **setting), nest["image"][top])
        margin = min(val["f1_6"] - 0.80, val["aji"] - 0.55, guard["f1_6"] - 0.80, guard["aji"] - 0.55)
        rows.append({**setting, "margin": margin, "validation": val, "halves": halves, "nest_training_rows": guard})
    rows.sort(key=lambda r: -r["margin"])
    default = {"threshold": 0.5, "sigma": 2.0, "core": 0.4, "grow": None}
    chosen = {k: rows[0][k] for k in GRID}

    held = np.s_[HOLDOUT_ROW:]
    result = {"tta": tta, "chosen": chosen, "top": rows[:10], "held_out": {}}
    for label, setting in (("default", default), ("chosen", chosen)):
        result["held_out"][label] = {
            "stroma": _scores(stroma["true"][held], post(stroma_maps[0][held], stroma_maps[1][held], **setting),
                              stroma["image"][held]),
            "nest": _scores(nest["true"][held], post(nest_maps[0][held], nest_maps[1][held], **setting),
                            nest["image"][held]),
        }
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"{len(rows)} settings; maps averaged over {tta} symmetries; validation = each fold network's unseen half")
    print("threshold sigma core grow | margin | validation F1@6 AJI count | halves F1@6 | nest training rows F1@6 AJI")
    for r in rows[:10]:
        v, g = r["validation"], r["nest_training_rows"]
        halves = " ".join(f"{h['f1_6']:.3f}" for h in r["halves"])
        print(f"{r['threshold']:9} {r['sigma']:5} {r['core']:4} {r['grow']!s:4} | {r['margin']:+.3f} | "
              f"{v['f1_6']:.3f} {v['aji']:.3f} {v['count_ratio']:.2f} | "
              f"{halves} | {g['f1_6']:.3f} {g['aji']:.3f}")
    print("held-out rows y >= 1000, shipped network (read once, after the choice):")
    for label, s in result["held_out"].items():
        print(f"  {label:8}", "; ".join(
            f"{image} F1@6 {v['f1_6']:.3f} AJI {v['aji']:.3f} count {v['count_ratio']:.2f}" for image, v in s.items()
        ))


if __name__ == "__main__":
    main()
