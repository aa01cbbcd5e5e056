"""`nucleograph synth`, `nucleograph ingest`, `nucleograph export` and `nucleograph segmenter train`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from nucleograph.config import Settings
from nucleograph.db import runs as db_runs
from nucleograph.db.graphdb import GraphDB
from nucleograph.errors import InputError
from nucleograph.ingest.cohort import discover
from nucleograph.ingest.export import EXPORT_FORMATS, export_explanation
from nucleograph.ingest.graph import DEFAULT_THRESHOLD_PX
from nucleograph.ingest.importers import describe_notes
from nucleograph.ingest.pipeline import DETECTORS, IngestParams
from nucleograph.ingest.synth import TASKS, synthesize_cohort, synthesize_slide_cohort
from nucleograph.output import DefaultsHelpFormatter, emit_json

if TYPE_CHECKING:
    pass


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``synth``, ``ingest``, ``export`` and ``segmenter train`` to the ``nucleograph`` command line."""
    p = sub.add_parser("synth", help="write a synthetic H&E cohort with ground-truth nuclei and roles",
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("task", choices=sorted(TASKS))
    p.add_argument("--n", type=int, required=True,
                   help="images (with --slide: slides) per class (breast: 2 classes, so --n 20 writes 40)")
    p.add_argument("--out", required=True,
                   help="output folder (images/, masks/, nuclei/, manifest.csv; with --slide: slides/, nuclei/, "
                        "regions/, manifest.csv)")
    p.add_argument("--seed", type=int, default=0, help="seeds every image (same seed, same cohort)")
    p.add_argument("--size", default=None,
                   help="WIDTHxHEIGHT (default: the paper's image sizes; with --slide: 40000x30000)")
    p.add_argument("--slide", action="store_true",
                   help="whole slides: pyramidal TIFFs whose tissue regions are drawn by the task's image generator, "
                        "labelled by their highest region class (regions/*.json lists the regions)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes drawing tiles side by side (the files are the same for any number)")
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
    p.add_argument("--cluster", default=None, metavar="SPEC",
                   help="run on Dask instead: local[:N] (a local cluster of N worker processes) or tcp://HOST:PORT "
                        "(a running `dask scheduler`); default $NUCLEOGRAPH_DASK. Each image (and each tile of a "
                        "slide) is a task; the dashboard link is printed")
    p.add_argument("--nuclei", default=None, metavar="PATH",
                   help="the nuclei of a single image (QuPath/HoVer-Net/GeoJSON, GeoParquet or a label mask) "
                        "instead of detecting them; for many images use a manifest nuclei column or IMAGE.geojson "
                        "sidecars")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("export", help="write a run's explanation as QuPath GeoJSON (one file per image)",
                       formatter_class=DefaultsHelpFormatter)
    p.add_argument("--run", required=True, help="a run id (`nucleograph runs`)")
    p.add_argument("--method", choices=list(db_runs.METHODS), default=db_runs.DEFAULT_METHOD, help="explanation method")
    p.add_argument("--hops", type=int, default=1, choices=[1, 2, 3], help="occlusion's neighbourhood size")
    p.add_argument("--output", choices=list(db_runs.OUTPUTS), default="logodds",
                   help="which occlusion scores: drops of the explained class's log-odds or of its probability")
    p.add_argument("--out", required=True, help="folder to write IMAGE.geojson files to (created)")
    p.add_argument("--format", choices=list(EXPORT_FORMATS), default="geojson", help="file format")
    p.add_argument("--image", action="append", default=None, help="an image id (repeat; default: all explained)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_export)

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
    if args.slide and args.workers != 1:
        raise InputError("--workers draws tiles side by side; with --slide leave it out (slides are written one "
                         "at a time: each holds a whole slide's arrays in memory)")
    try:
        if args.slide:
            manifest = synthesize_slide_cohort(args.task, n_per_class=args.n, out_dir=args.out, seed=args.seed,
                                               size=_parse_size(args.size), progress=not args.json)
        else:
            manifest = synthesize_cohort(args.task, n_per_class=args.n, out_dir=args.out, seed=args.seed,
                                         size=_parse_size(args.size), progress=not args.json, workers=args.workers)
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
    if args.nuclei:
        _attach_nuclei(records, Path(args.nuclei))
    params = IngestParams(detector=args.detector, threshold=args.threshold, threshold_unit=args.threshold_unit)
    task = next((r.meta.get("task") for r in records if r.meta.get("task")), None)
    with GraphDB.open(settings) as db, _cluster_client(args) as client:
        summary = ingest_records(records, cohort=args.cohort, params=params, settings=settings, db=db,
                                 workers=max(1, args.workers), progress=True, task=task, client=client)
    if args.json:
        emit_json(summary.as_dict())
    else:
        print(f"cohort {summary.cohort}: {summary.ok}/{summary.images} images ok ({summary.stored} stored, "
              f"{summary.replaced} replaced, {summary.unchanged} unchanged, {summary.linked} linked, "
              f"{summary.updated} updated), {summary.failed} failed; "
              f"{summary.nuclei} nuclei, {summary.edges} edges in {summary.seconds} s")
        for f in summary.failures:
            print(f"  failed: {f['error']}", file=sys.stderr)
        for n in summary.import_notes:
            counts = {k: v for k, v in n.items() if k not in ("path", "nuclei")}
            print(f"  imported {n['nuclei']}: {describe_notes(counts)}", file=sys.stderr)
        for path in sorted(summary.no_nuclei_paths):
            print(f"  no nuclei found: {path}: stored with 0 nuclei (an all-white or all-black image, or blank "
                  "glass?); training and explanations skip it. Check the file, or remove it from the cohort",
                  file=sys.stderr)
    return 0 if summary.failed == 0 else 3


def _cluster_client(args):
    """The Dask client ``--cluster`` (or NUCLEOGRAPH_DASK) names, for the duration; None without one."""
    # imported here, not at the top: distributed adds most of a second to every command's start
    from nucleograph import cluster

    spec = cluster.ClusterSpec.chosen(args.cluster)
    if spec is not None and args.workers > 1:
        raise InputError(f"--workers {args.workers} is the process pool of an ingest without a cluster; on Dask "
                         f"({spec}) the cluster's workers do the work: use --cluster local:{args.workers} instead")
    return cluster.chosen_client(args.cluster)


def _attach_nuclei(records: list, nuclei: Path) -> None:
    """Make ``nuclei`` the segmentation of the one image ``--nuclei`` may go with."""
    if len(records) != 1:
        raise InputError(f"--nuclei {nuclei} names the nuclei of one image, but {len(records)} images were given; "
                         "for a cohort add a nuclei column to the manifest, or put IMAGE.geojson (or .json, "
                         ".nuclei.parquet, .mask.png) next to each image")
    if not nuclei.is_file():
        raise InputError(f"--nuclei {nuclei}: no such file; check the path")
    records[0].meta = {**(records[0].meta or {}), "nuclei": nuclei.resolve()}


def cmd_export(args, settings: Settings) -> int:
    """``nucleograph export``: one QuPath GeoJSON per image of a run's explanation."""
    hops = args.hops if args.method == "occlusion" else None
    with GraphDB.open(settings) as db:
        out = export_explanation(db, run_id=args.run, method=args.method, hops=hops, out_dir=args.out,
                                 fmt=args.format, image_ids=args.image, progress=not args.json, output=args.output)
    if args.json:
        emit_json(out)
    else:
        print(f"wrote {len(out['files'])} GeoJSON file(s), {out['nuclei']} nuclei ({out['explanation']} scores), "
              f"to {out['out']} (QuPath: File > Import objects from file)")
    if out["stale"]:
        print(f"warning: {len(out['stale'])} image(s) were re-ingested into the run's cohort after they were "
              f"scored and were left out; rerun `nucleograph explain --run {args.run} --method {args.method}`",
              file=sys.stderr)
    return 0


def cmd_segmenter_train(args, settings: Settings) -> int:
    """``nucleograph segmenter train``: train the U-Net on image and mask folders."""
    from nucleograph.ingest.unet import train_unet

    info = train_unet(args.images, args.masks, out=args.out, epochs=args.epochs, seed=args.seed, progress=not args.json)
    if args.json:
        emit_json(info)
    else:
        print(f"saved {args.out}: {info}")
    return 0
