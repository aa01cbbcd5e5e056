"""`nucleograph synth`, `nucleograph ingest` and `nucleograph segmenter train`."""

from __future__ import annotations

import argparse
import sys

from nucleograph.config import Settings
from nucleograph.db.graphdb import GraphDB
from nucleograph.errors import InputError
from nucleograph.ingest.cohort import discover
from nucleograph.ingest.graph import DEFAULT_THRESHOLD_PX
from nucleograph.ingest.pipeline import DETECTORS, IngestParams
from nucleograph.ingest.synth import TASKS, synthesize_cohort
from nucleograph.output import DefaultsHelpFormatter, emit_json


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``synth``, ``ingest`` and ``segmenter train`` to the ``nucleograph`` command line."""
    p = sub.add_parser("synth", help="write a synthetic H&E cohort with ground-truth nuclei and roles",
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("task", choices=sorted(TASKS))
    p.add_argument("--n", type=int, required=True, help="images per class (breast: 2 classes, so --n 20 writes 40)")
    p.add_argument("--out", required=True, help="output folder (images/, masks/, nuclei/, manifest.csv)")
    p.add_argument("--seed", type=int, default=0, help="seeds every image (same seed, same cohort)")
    p.add_argument("--size", default=None, help="WIDTHxHEIGHT (default: the paper's image sizes)")
    p.add_argument("--json", action="store_true", help="print the manifest path as JSON")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("ingest", help="detect nuclei, build graphs and store them in Neo4j",
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("paths", nargs="+", help="images, slides, folders (BACH or with manifest.csv) or CSV manifests")
    p.add_argument("--cohort", required=True, help="the cohort to add the images to (created if new)")
    p.add_argument("--detector", choices=DETECTORS, default="watershed", help="nucleus detector")
    p.add_argument("--classes", default=None, help="comma-separated labels to keep, e.g. InSitu,Invasive")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD_PX, help="edge threshold: nuclei closer than this are linked")
    p.add_argument("--threshold-unit", choices=["px", "um"], default="px", help="unit of --threshold")
    p.add_argument("--workers", type=int, default=1, help="parallel detection processes")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_ingest)

    seg = sub.add_parser("segmenter", help="the U-Net nucleus segmenter")
    segsub = seg.add_subparsers(dest="segmenter_command", required=True)
    p = segsub.add_parser("train", help="train the U-Net on image and mask folders")
    p.add_argument("--images", required=True)
    p.add_argument("--masks", required=True)
    p.add_argument("--out", required=True, help="checkpoint file (.pt)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_segmenter_train)


def _parse_size(text: str | None):
    if text is None:
        return None
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise InputError(f"--size {text!r}: write it as WIDTHxHEIGHT, e.g. 1024x768") from exc
    return (w, h)


def cmd_synth(args, settings: Settings) -> int:
    """``nucleograph synth``: write a synthetic cohort; returns the exit status."""
    try:
        manifest = synthesize_cohort(args.task, n_per_class=args.n, out_dir=args.out, seed=args.seed,
                                     size=_parse_size(args.size), progress=not args.json)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    if args.json:
        emit_json({"manifest": str(manifest)})
    else:
        print(f"wrote {manifest}")
    return 0


def cmd_ingest(args, settings: Settings) -> int:
    """``nucleograph ingest``: ingest images into a cohort; exit status 3 when any image failed."""
    # imported here, not at the top: run loads the SQL records layer, which only an ingest needs
    from nucleograph.ingest.run import ingest_records

    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    records = discover(args.paths, classes=classes)
    if not records:
        raise InputError(f"no images found in {' '.join(args.paths)}" + (f" with classes {classes}" if classes else ""))
    params = IngestParams(detector=args.detector, threshold=args.threshold, threshold_unit=args.threshold_unit)
    task = next((r.meta.get("task") for r in records if r.meta.get("task")), None)
    with GraphDB.open(settings) as db:
        summary = ingest_records(records, cohort=args.cohort, params=params, settings=settings, db=db,
                                 workers=max(1, args.workers), progress=True, task=task)
    out = summary.as_dict()
    if args.json:
        emit_json(out)
    else:
        print(f"cohort {summary.cohort}: {summary.ok}/{summary.images} images ok ({summary.stored} stored, "
              f"{summary.replaced} replaced, {summary.unchanged} unchanged, {summary.linked} linked), {summary.failed} failed; "
              f"{summary.nuclei} nuclei, {summary.edges} edges in {summary.seconds} s")
        for f in summary.failures:
            print(f"  failed: {f['error']}", file=sys.stderr)
    return 0 if summary.failed == 0 else 3


def cmd_segmenter_train(args, settings: Settings) -> int:
    """``nucleograph segmenter train``: train the U-Net on image and mask folders."""
    from nucleograph.ingest.unet import train_unet

    info = train_unet(args.images, args.masks, out=args.out, epochs=args.epochs, seed=args.seed, progress=not args.json)
    if args.json:
        emit_json(info)
    else:
        print(f"saved {args.out}: {info}")
    return 0
