"""`nucleograph train | experiment | runs | explain | scores | render | evaluate`."""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence

from nucleograph.config import Settings
from nucleograph.db import runs as db_runs
from nucleograph.db.graphdb import GraphDB
from nucleograph.errors import InputError, ModelError
from nucleograph.gnn.metrics import CONSTANT_OUTPUT_WARN, constant_output_note
from nucleograph.gnn.render import RANK_METHODS, default_scaling
from nucleograph.gnn.render import SCALINGS as RENDER_SCALINGS
from nucleograph.output import DefaultsHelpFormatter, emit_json, format_table, positive_int

#: The most pixels ``render`` draws (a slide is drawn at a level, or by window, to stay under it).
RENDER_MAX_PIXELS = 2**25
#: The most nuclei ``render`` draws as discs in one picture.
RENDER_MAX_NUCLEI = 1_000_000


def _registry_names() -> tuple[str, ...]:
    from nucleograph.gnn.models import MODEL_NAMES

    return MODEL_NAMES


class _ModelNames(Sequence):
    """The model registry's names (:data:`nucleograph.gnn.models.MODEL_NAMES`), read on first use.

    Importing the models loads torch and DGL (about 3 s), and every ``nucleograph`` command builds
    this module's parsers. argparse reads ``choices`` only to check a given ``--model`` or to print
    help (``metavar`` keeps it from listing them while the parser is built), so only ``train`` and
    ``experiment`` pay for the import, and they need torch anyway.
    """

    def __getitem__(self, index):
        return _registry_names()[index]

    def __len__(self) -> int:
        return len(_registry_names())


MODEL_CHOICES = _ModelNames()
_HELP = DefaultsHelpFormatter


def _given(args, *names: str) -> dict:
    """The options among ``names`` given on the command line; the others keep the library's defaults
    (:class:`nucleograph.gnn.train.TrainConfig`), which are not repeated here."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def register(sub: argparse._SubParsersAction) -> None:
    """Add the gnn subcommands to the ``nucleograph`` parser."""
    # The defaults named in this help are TrainConfig's (not imported here: it loads torch); a test
    # pins them to it.
    p = sub.add_parser("train", help="train a graph network on a cohort stored in Neo4j", formatter_class=_HELP)
    p.add_argument("--cohort", required=True, help="a cohort ingested with `nucleograph ingest --cohort`")
    p.add_argument("--model", choices=MODEL_CHOICES, metavar="MODEL", help="one of %(choices)s; the first is the default")
    p.add_argument("--epochs", type=int, help="most epochs to run (default: 50)")
    p.add_argument("--lr", type=float,
                   help="Adam's learning rate (default: 0.003); the paper's 0.01 leaves few of the FC head's units "
                        "alive, which made some runs fall to chance and explanations miss the structure more often: "
                        "README, 'Which to trust'")
    p.add_argument("--folds", type=int, default=1, help="stratified k-fold cross-validation (default: one split)")
    p.add_argument("--seed", type=int, help="seeds the split, initialisation and batches (default: 0)")
    p.add_argument("--batch-size", type=int, help="graphs per step (default: 8)")
    p.add_argument("--patience", type=int, help="early stopping on validation loss, 0: off (default: 10)")
    p.add_argument("--drop-nodes", type=float, metavar="SHARE",
                   help="augmentation: each training graph loses a random share of up to SHARE of its nuclei at "
                        "every step, so thinned graphs (occlusion, deletion curves) are not new to the model "
                        "(default: 0, off)")
    p.add_argument("--ensemble", type=positive_int, default=None, metavar="K",
                   help="train a seed ensemble: K models per split from different seeds, whose mean logits are the "
                        "run's model; explaining it costs K times one model (default: 1, one model)")
    p.add_argument("--split-by", choices=["patient", "image"], default=None,
                   help="keep each patient's images in one part of the split (when all images have a patient), "
                        "or split images independently (default: patient)")
    p.add_argument("--roi", default="auto", metavar="WxH|auto|off",
                   help="train on regions of interest of whole slides: windows of WxH px read from Neo4j, labelled "
                        "by their slide, split by slide, a slide's prediction the mean of its ROIs' log-odds; auto: "
                        "2048x1536 when an image of the cohort has more than 2^25 pixels, else whole images; off: "
                        "whole images")
    p.add_argument("--roi-per-slide", type=positive_int, default=None, metavar="K",
                   help="ROIs drawn per slide where its nuclei are (implies ROIs; default: 16)")
    p.add_argument("--resume", metavar="RUN", default=None,
                   help="continue a crashed or interrupted run from its last checkpoint (`nucleograph runs` "
                        "lists them)")
    p.add_argument("--json", action="store_true", help="print the run (id, metrics, checkpoints) as JSON")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("experiment", help="reproduce a table of the paper")
    p.add_argument("table", choices=["table2"])
    p.add_argument("--cohort", action="append", required=True, help="a cohort (repeat for several)")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--epochs", type=int)
    p.add_argument("--models", default=None, help="comma-separated (default: every model of `train --help`)")
    p.add_argument("--seed", type=int)
    p.add_argument("--lr", type=float, help="Adam's learning rate (default: 0.01, the paper's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_experiment)

    p = sub.add_parser("runs", help="list model runs (their ids are the RUN of explain, scores, render)",
                       formatter_class=_HELP)
    p.add_argument("--cohort", default=None, help="only this cohort's runs")
    p.add_argument("--json", action="store_true", help="every run property as JSON")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser("explain", help="per-nucleus importance for a run, written to Neo4j", formatter_class=_HELP)
    p.add_argument("--run", required=True, help="a run id (`nucleograph runs`)")
    p.add_argument("--method", choices=list(db_runs.METHODS), default=db_runs.DEFAULT_METHOD,
                   help="explanation method; a nucleus's score is, for " +
                        "; ".join(f"{m}: {note}" for m, note in db_runs.METHOD_NOTES.items()))
    p.add_argument("--hops", type=int, default=1, choices=[1, 2, 3], help="occlusion's neighbourhood size")
    p.add_argument("--output", choices=list(db_runs.OUTPUTS), default="logodds",
                   help="what occlusion scores measure: the drop of the explained class's log-odds (does not "
                        "saturate) or of its probability (what occlusion stored before outputs existed)")
    p.add_argument("--cohort", default=None, help="explain the run's images of this cohort (default: all)")
    p.add_argument("--image", action="append", default=None, help="an image id (repeat)")
    p.add_argument("--cluster", default=None, metavar="SPEC",
                   help="explain on Dask, an image per task: local[:N] or tcp://HOST:PORT; default $NUCLEOGRAPH_DASK")
    p.add_argument("--target", type=int, default=None,
                   help="class index to explain (default: predicted); recomputes every image")
    p.add_argument("--force", action="store_true",
                   help="recompute images that already have this run's scores for this method, hops and output")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("scores", help="export per-nucleus scores", formatter_class=_HELP)
    p.add_argument("--run", required=True, help="a run id (`nucleograph runs`)")
    p.add_argument("--method", choices=list(db_runs.METHODS), default=db_runs.DEFAULT_METHOD,
                   help="explanation method (what each one's scores mean: `nucleograph explain --help`)")
    p.add_argument("--hops", type=int, default=1, choices=[1, 2, 3], help="occlusion's neighbourhood size")
    p.add_argument("--output", choices=list(db_runs.OUTPUTS), default="logodds",
                   help="what occlusion scores measure: the drop of the explained class's log-odds (does not "
                        "saturate) or of its probability (what occlusion stored before outputs existed)")
    p.add_argument("--image", action="append", default=None, help="an image id (repeat; default: all explained)")
    p.add_argument("--format", choices=["csv", "json"], default="csv", help="output format")
    p.add_argument("--out", default="-", help="file (default: standard output)")
    p.set_defaults(func=cmd_scores)

    p = sub.add_parser("render", help="draw a run's per-nucleus importance over the image", formatter_class=_HELP)
    p.add_argument("--image", required=True, help="an image id (`nucleograph images --cohort C`)")
    p.add_argument("--run", required=True, help="a run id (`nucleograph runs`)")
    p.add_argument("--method", choices=list(db_runs.METHODS), default=db_runs.DEFAULT_METHOD,
                   help="explanation method (what each one's scores mean: `nucleograph explain --help`)")
    p.add_argument("--hops", type=int, default=1, choices=[1, 2, 3], help="occlusion's neighbourhood size")
    p.add_argument("--output", choices=list(db_runs.OUTPUTS), default="logodds",
                   help="what occlusion scores measure: the drop of the explained class's log-odds (does not "
                        "saturate) or of its probability (what occlusion stored before outputs existed)")
    p.add_argument("--edges", action="store_true", help="draw the nucleus graph too")
    p.add_argument("--scaling", choices=list(RENDER_SCALINGS), default=None,
                   help="colours: scores over their 99th percentile of |score|, or each nucleus's rank in the "
                        "image (-1 lowest, +1 highest; for maps read by their order); default: rank for "
                        + " and ".join(sorted(RANK_METHODS)) + "; relative for the other methods")
    p.add_argument("--level", type=int, default=None,
                   help="pyramid level of a slide to draw at (0: full resolution; default: the finest level "
                        f"that keeps the picture under {RENDER_MAX_PIXELS:,} px)")
    p.add_argument("--window", default=None, metavar="X0,Y0,X1,Y1",
                   help="draw only this window (full-resolution pixels, top-left corner first)")
    p.add_argument("--out", required=True, help="image file to write (.png)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("evaluate", formatter_class=_HELP,
                       help="how faithful, sparse and stable a stored explanation is, and whether it finds the "
                            "tissue structure (recorded in SQL and on the Explanation)")
    p.add_argument("--run", required=True, help="a run id (`nucleograph runs`)")
    p.add_argument("--method", choices=list(db_runs.METHODS), default=db_runs.DEFAULT_METHOD, help="explanation method")
    p.add_argument("--hops", type=int, default=1, choices=[1, 2, 3], help="occlusion's neighbourhood size")
    p.add_argument("--output", choices=list(db_runs.OUTPUTS), default=db_runs.OUTPUTS[0],
                   help="what the occlusion scores measure")
    p.add_argument("--images", type=positive_int, default=None,
                   help="evaluate at most this many explained images, balanced over labels (default: all)")
    p.add_argument("--per-class", type=positive_int, default=None, help="at most this many explained images per label")
    p.add_argument("--random", type=positive_int, default=3,
                   help="random orders averaged for the deletion and insertion baselines")
    p.add_argument("--truth", default=None, metavar="DIR",
                   help="the synthetic cohort folder the images came from (`nucleograph synth --out`): AUROC of "
                        "each structural role above stroma, and role enrichment in the top 10%%")
    p.add_argument("--against", default=None, metavar="RUN2",
                   help="stability against this run of the same cohort (default: a k-fold run's next fold)")
    p.add_argument("--seed", type=int, default=0, help="seeds the random orders")
    p.add_argument("--json", action="store_true", help="print the whole summary, per image too, as JSON")
    p.set_defaults(func=cmd_evaluate)


def cmd_train(args, settings: Settings) -> int:
    """Run ``nucleograph train``; returns the exit status."""
    from nucleograph.gnn.interrupt import TrainingInterrupted, sigterm_interrupts
    from nucleograph.gnn.service import train_cohort

    options = _given(args, "model", "epochs", "lr", "seed", "batch_size", "split_by", "drop_nodes", "ensemble")
    if args.patience is not None:
        options["patience"] = args.patience or None
    options["roi"] = _roi_option(args.roi, args.roi_per_slide)
    try:
        # SIGTERM (kill, a service manager) stops training as Ctrl-C does, so the run records it
        with sigterm_interrupts(), GraphDB.open(settings) as db:
            out = train_cohort(db, settings, args.cohort, folds=args.folds, resume_run=args.resume,
                               progress=True, **options)
    except TrainingInterrupted as exc:
        print(f"nucleograph: {exc}", file=sys.stderr)
        return 130
    if args.json:
        emit_json(out)
    else:
        m = out["metrics"]
        on = (f"{out['n_images']} slides ({out['n_rois']} ROIs of {out['roi']['width']}x{out['roi']['height']} px)"
              if out.get("roi") else f"{out['n_images']} graphs")
        print(f"run {out['run_id']}: {out['model']} ({out['n_parameters']} parameters) on {on} in {out['seconds']} s")
        keys = ("accuracy", "balanced_accuracy", "roc_auc", "f1") + (("roi_accuracy",) if out.get("roi") else ())
        print(("test slides: " if out.get("roi") else "test: ") + ", ".join(f"{k} {m[k]:.3f}" for k in keys if k in m))
    if out["metrics"].get("at_or_below_chance"):
        print(chance_warning(out), file=sys.stderr)
    if out["metrics"].get("constant_output_share", 0.0) >= CONSTANT_OUTPUT_WARN:
        print(constant_output_warning(out), file=sys.stderr)
    return 0


def _roi_option(text: str, per_slide: int | None):
    """``train --roi`` and ``--roi-per-slide`` as :func:`nucleograph.gnn.service.train_cohort`'s ``roi``."""
    from nucleograph.gnn.slides import AUTO, RoiParams

    text = text.strip().lower()
    count = {} if per_slide is None else {"per_slide": per_slide}
    if text == "off":
        if per_slide is not None:
            raise InputError("--roi off trains on whole images: drop --roi-per-slide, or give --roi auto or WxH")
        return None
    if text == AUTO:
        return RoiParams(**count) if count else AUTO
    try:
        width, height = (int(v) for v in text.split("x"))
    except ValueError:
        raise InputError(f"--roi {text!r}: give WIDTHxHEIGHT in pixels (e.g. 2048x1536), auto or off") from None
    return RoiParams(width=width, height=height, **count)


def chance_warning(out: dict) -> str:
    """The warning for a run whose test accuracy is at or below the majority-class rate."""
    m = out["metrics"]
    return (f"warning: run {out['run_id']}'s test accuracy {m['accuracy']:.3f} is at or below chance "
            f"({m['chance_accuracy']:.3f}, the majority class's share of the test images): the model has learned "
            "nothing usable, so its predictions and explanations are not evidence. Train on more images "
            "(`nucleograph synth --n` is per class) or for more epochs (--epochs, --patience 0)")


def constant_output_warning(out: dict) -> str:
    """The warning for a run that answers many images with one and the same output."""
    note = constant_output_note(out["metrics"]["constant_output_share"])
    return f"warning: run {out['run_id']} {note}. Retrain with another --seed or a lower --lr (e.g. 0.001; the default is 0.003)"


def cmd_experiment(args, settings: Settings) -> int:
    """Run ``nucleograph experiment``; returns the exit status."""
    from nucleograph.gnn.experiment import table2

    if args.models is None:
        models = list(MODEL_CHOICES)
    else:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = sorted(set(models) - set(MODEL_CHOICES))
    if bad:
        raise InputError(f"unknown model(s) {bad}: choose from {', '.join(MODEL_CHOICES)}")
    with GraphDB.open(settings) as db:
        out = table2(db, settings, args.cohort, models=models, folds=args.folds, progress=True,
                     **_given(args, "epochs", "seed", "lr"))
    if args.json:
        emit_json(out)
    else:
        print(out["markdown"])
    return 0


def cmd_runs(args, settings: Settings) -> int:
    """Run ``nucleograph runs``; returns the exit status."""
    from nucleograph.db import records as rec
    from nucleograph.gnn.interrupt import resume_command

    engine = rec.open_engine(settings)
    try:
        rec.mark_dead_runs(engine, cohort=args.cohort)  # runs killed with -9 still say "running"
        unfinished = rec.unfinished_runs(engine, cohort=args.cohort)
    finally:
        engine.dispose()
    with GraphDB.open(settings) as db:
        rows = db_runs.list_runs(db, cohort=args.cohort)
    # Neo4j holds finished runs; SQL also those running, failed or interrupted
    known = {r["id"] for r in rows}
    unfinished = [r for r in unfinished if r["id"] not in known]
    for r in unfinished:
        if r["status"] == rec.INTERRUPTED:
            r["resume"] = resume_command(r["cohort"], r["id"])
    rows = unfinished + rows
    if args.json:
        emit_json(rows)
    else:
        cols = ["id", "cohort", "model", "ensemble", "status", "accuracy", "roc_auc", "n_parameters", "created_at"]
        print(format_table(cols, rows))
        for r in unfinished:
            if "resume" in r:
                print(f"run {r['id']} is {r['status']} ({r['error']}): continue it with `{r['resume']}`")
    return 0


def cmd_explain(args, settings: Settings) -> int:
    """Run ``nucleograph explain``; returns the exit status."""
    from nucleograph import cluster  # distributed: only for explain (see ingest's cmd_ingest)
    from nucleograph.db import store
    from nucleograph.gnn.service import explain_run

    with GraphDB.open(settings) as db:
        image_ids = args.image
        if args.cohort and not image_ids:
            image_ids = [r["id"] for r in store.cohort_images(db, args.cohort)]
            if not image_ids:
                raise InputError(f"cohort {args.cohort!r} has no images")
        with cluster.chosen_client(args.cluster) as client:
            out = explain_run(db, settings, args.run, method=args.method, hops=args.hops, image_ids=image_ids,
                              target=args.target, force=args.force, progress=True, output=args.output, client=client)
    if args.json:
        emit_json(out)
        return 0
    if out["reused"]:
        print(f"already explained: {out['reused']} images, use --force to recompute")
    if out["images"] or not out["reused"]:
        print(f"{_title(args)} scores of run {out['run_id']} written to {out['images']} images as "
              f"Nucleus.{out['property']} in {out['seconds']} s" +
              (f"; skipped {len(out['skipped'])}" if out["skipped"] else ""))
    return 0


def _title(args) -> str:
    """The explanation ``args`` selects, as readers name it (e.g. "occlusion k=1, log-odds drop")."""
    occ = args.method == "occlusion"
    return db_runs.explanation_title(args.method, args.hops if occ else None, args.output if occ else None)


def _explain_command(args) -> str:
    """The ``nucleograph explain`` command that computes the explanation ``args`` selects."""
    occ = f" --hops {args.hops} --output {args.output}" if args.method == "occlusion" else ""
    return f"nucleograph explain --run {args.run} --method {args.method}{occ}"


def _other_outputs(expls: list[dict], args) -> str:
    """A hint naming the run's stored scores of the same method and hops under another output, or, when
    the run has no scores of the method at all (e.g. explained before local contribution became the default),
    the methods it has."""
    other = [e["output"] for e in expls if e["method"] == args.method == "occlusion" and e["hops"] == args.hops
             and e["output"] != args.output]
    if other:
        return f" (the run has {db_runs.OUTPUT_LABELS[other[0]]} scores: --output {other[0]})"
    if any(e["method"] == args.method for e in expls):
        return ""
    stored = {db_runs.explanation_title(e["method"], e["hops"], e["output"]): _method_flags(e) for e in expls}
    return (" (the run has " + "; ".join(f"{t} scores: {f}" for t, f in stored.items()) + ")") if stored else ""


def _method_flags(expl: dict) -> str:
    """The options that select a stored explanation, e.g. ``--method occlusion --hops 1 --output logodds``."""
    if expl["method"] != "occlusion":
        return f"--method {expl['method']}"
    return f"--method occlusion --hops {expl['hops']} --output {expl['output'] or db_runs.LEGACY_OUTPUT}"


def cmd_scores(args, settings: Settings) -> int:
    """Run ``nucleograph scores``; returns the exit status."""
    key = db_runs.explanation_key(args.run, args.method, args.hops, output=args.output)
    with GraphDB.open(settings) as db:
        rows = db_runs.export_scores(db, key, image_ids=args.image)
        expls = db_runs.list_explanations(db, run_id=args.run)
    stale = [x for e in expls if e["key"] == key for x in e["stale_images"]]
    old = sorted({r["image_id"] for r in rows if not r["current"]} | set(stale))
    if old:
        print(f"warning: {len(old)} image(s) of this explanation ({', '.join(i[:12] for i in old[:5])}"
              f"{', ...' if len(old) > 5 else ''}) were re-ingested into the run's cohort after they were scored: "
              f"their scores are left out; rerun `{_explain_command(args)}`", file=sys.stderr)
    rows = [{k: v for k, v in r.items() if k != "current"} for r in rows if r["current"]]
    if not rows:
        raise InputError(f"no {_title(args)} scores for run {args.run}: run `{_explain_command(args)}` first"
                         + _other_outputs(expls, args))
    _check_finite(rows, args)
    # standard error: standard output holds only the rows
    print(f"{len(rows)} nuclei: {_title(args)} scores of run {args.run}", file=sys.stderr)
    fh = sys.stdout if args.out == "-" else open(args.out, "w", newline="")  # noqa: SIM115
    try:
        if args.format == "json":
            import json

            json.dump(rows, fh, indent=1)
            fh.write("\n")
        else:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    finally:
        if fh is not sys.stdout:
            fh.close()
    return 0


def _check_finite(rows: list[dict], args) -> None:
    """Refuse to export a score that is not a finite number (older versions could store NaN)."""
    bad = sorted({r["image_id"] for r in rows if r["score"] is not None and not math.isfinite(r["score"])})
    if bad:
        raise ModelError(f"run {args.run}'s {_title(args)} scores of {len(bad)} image(s) ({', '.join(bad[:5])}"
                         f"{', ...' if len(bad) > 5 else ''}) hold NaN or infinite values, written by an older "
                         f"version: recompute them with `{_explain_command(args)}` (images with such scores are "
                         "explained again)")


def parse_window(text: str | None) -> tuple[float, float, float, float] | None:
    """``"X0,Y0,X1,Y1"`` as four floats (None for None); an InputError naming the format otherwise."""
    if text is None:
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--window {text!r}: give four numbers X0,Y0,X1,Y1 in full-resolution pixels, e.g. "
                         "--window 8000,6000,12096,9072") from None
    if not (x0 < x1 and y0 < y1) or min(x0, y0) < 0:
        raise InputError(f"--window {text!r} is empty or negative: give the top-left corner first "
                         "(0 <= X0 < X1 and 0 <= Y0 < Y1)")
    return x0, y0, x1, y1


def cmd_render(args, settings: Settings) -> int:
    """Run ``nucleograph render``; returns the exit status."""
    import numpy as np

    from nucleograph.db import store
    from nucleograph.gnn.render import render_importance
    from nucleograph.ingest.readers import is_slide, read_image

    prop = db_runs.score_property(args.run, args.method, args.hops, output=args.output)
    window = parse_window(args.window)
    if args.scaling is None:
        args.scaling = default_scaling(args.method)
    with GraphDB.open(settings) as db:
        run = db_runs.get_run(db, args.run)
        if run is None:
            raise InputError(f"no model run {args.run!r} in Neo4j: `nucleograph runs` lists them")
        image = next((r for r in store.cohort_images(db, run["cohort"]) if r["id"] == args.image), None)
        if image is not None and (window is not None or args.level is not None or is_slide(image["path"])):
            return _render_window(db, args, run, image, prop, window)
        graphs = list(store.read_graphs(db, run["cohort"], [args.image]))
        if not graphs:
            raise InputError(f"no image {args.image!r} in run {args.run}'s cohort {run['cohort']!r}: "
                             f"`nucleograph images --cohort {run['cohort']}` lists them")
        scores = db_runs.image_scores(db, run["cohort"], args.image, prop)
        preds = {p["image_id"]: p for p in db_runs.predictions(db, args.run)}
        areas = store.nucleus_areas(db, run["cohort"], args.image)
        expls = db_runs.list_explanations(db, run_id=args.run)
    g = graphs[0]
    s = np.array([r["score"] if r["score"] is not None else np.nan for r in scores], dtype=float)
    if np.all(np.isnan(s)):
        raise InputError(f"image {args.image} has no {_title(args)} scores for run {args.run}: run "
                         f"`{_explain_command(args)} --image {args.image}`" + _other_outputs(expls, args))
    pred = preds.get(args.image, {})
    title = (f"{g['label']} | {run.get('model')} predicts {pred.get('pred')} "
             f"(p={pred.get('prob', float('nan')):.2f}) | {_title(args)}")
    radii = np.sqrt(np.maximum(areas, 1.0) / np.pi)
    out = render_importance(read_image(g["path"]), g["centroids"], radii, s, args.out,
                            edges=(g["src"], g["dst"]) if args.edges else None, title=title, scaling=args.scaling)
    print(f"wrote {out}")
    return 0


def _render_window(db: GraphDB, args, run: dict, image: dict, prop: str, window) -> int:
    """``render`` of a slide, or of a window of any image, at a pyramid level: the pixels read by window
    (never the whole slide), the window's nuclei from the point index."""
    import numpy as np

    from nucleograph.db import store
    from nucleograph.gnn.render import render_importance
    from nucleograph.ingest.readers import is_slide, open_slide, read_image, read_slide_region

    path, width, height = image["path"], int(image["width"]), int(image["height"])
    window = window or (0.0, 0.0, float(width), float(height))
    if window[0] >= width or window[1] >= height:
        raise InputError(f"--window {args.window} lies outside image {args.image} ({width}x{height} px)")
    window = (window[0], window[1], min(window[2], width), min(window[3], height))
    ww, wh = window[2] - window[0], window[3] - window[1]
    if is_slide(path):
        slide = open_slide(path)
        try:
            downs = [float(d) for d in slide.level_downsamples]
            level = args.level
            if level is None:  # the finest level that fits
                level = next((lv for lv, d in enumerate(downs) if math.ceil(ww / d) * math.ceil(wh / d)
                              <= RENDER_MAX_PIXELS), len(downs) - 1)
            pixels = read_slide_region(path, window, level=level, max_pixels=RENDER_MAX_PIXELS, slide=slide)
            down = downs[level]
        finally:
            slide.close()
    else:
        if args.level not in (None, 0):
            raise InputError(f"image {args.image} ({path}) is not a pyramidal slide: it has level 0 only; "
                             "drop --level or pass --level 0")
        x0, y0, x1, y1 = (int(round(v)) for v in window)
        pixels, down = read_image(path)[y0:y1, x0:x1], 1.0
    limit = RENDER_MAX_NUCLEI + 1
    nuc = store.viewport_nuclei(db, run["cohort"], args.image, *window, score_property=prop, limit=limit)
    if len(nuc["nid"]) >= limit:
        raise InputError(f"the window holds more than {RENDER_MAX_NUCLEI:,} nuclei, too many discs to draw: pass "
                         "a smaller --window (the dashboard's Slide viewer shows whole slides binned)")
    if not np.isfinite(nuc["score"]).any():
        raise InputError(f"image {args.image} has no {_title(args)} scores for run {args.run} in this window: run "
                         f"`{_explain_command(args)} --image {args.image}`")
    edges = None
    if args.edges:
        roi = store.window_nuclei(db, run["cohort"], args.image, *window)
        at = {int(n): i for i, n in enumerate(nuc["nid"])}
        pairs = [(at.get(int(roi["nids"][a])), at.get(int(roi["nids"][b]))) for a, b in zip(roi["src"], roi["dst"],
                                                                                              strict=True)]
        pairs = np.asarray([p for p in pairs if None not in p], dtype=np.int64).reshape(-1, 2)
        edges = (pairs[:, 0], pairs[:, 1])
    centroids = (np.stack([nuc["x"], nuc["y"]], 1) - np.asarray(window[:2])) / down
    radii = np.sqrt(np.maximum(np.nan_to_num(nuc["area"], nan=1.0), 1.0) / np.pi) / down
    title = (f"{image['label']} | {args.image} | x {window[0]:.0f}-{window[2]:.0f}, y {window[1]:.0f}-{window[3]:.0f}"
             f" at downsample {down:g} | {_title(args)}")
    out = render_importance(pixels, centroids, radii, nuc["score"], args.out, edges=edges, title=title,
                            max_side=max(pixels.shape[:2]), scaling=args.scaling)
    print(f"wrote {out} ({pixels.shape[1]}x{pixels.shape[0]} px of the image at downsample {down:g}, "
          f"{len(nuc['nid']):,} nuclei)")
    return 0


def cmd_evaluate(args, settings: Settings) -> int:
    """Run ``nucleograph evaluate``; returns the exit status."""
    from nucleograph.gnn.evaluate import (
        COMPARTMENT_COLUMNS,
        TABLE_COLUMNS,
        class_rows,
        compartment_rows,
        evaluate_run,
        role_rows,
    )

    with GraphDB.open(settings) as db:
        out = evaluate_run(db, settings, args.run, method=args.method, hops=args.hops, output=args.output,
                           images=args.images, per_class=args.per_class, n_random=args.random, truth=args.truth,
                           against=args.against, seed=args.seed, progress=True)
    if args.json:
        emit_json(out)
        return 0
    title = db_runs.explanation_title(out["method"], out["hops"], out["output"])
    print(f"run {out['run_id']} ({out['model']}, cohort {out['cohort']}): {title}, {out['n_images']} images, "
          f"{out['n_random']} random orders, {out['seconds']} s")
    print(format_table(list(TABLE_COLUMNS), class_rows(out)))
    print("deletion, insertion: area under the curve / random order's (deletion: lower is better; insertion: "
          "higher); sparsity: share of the positive score in the top 10%; ties: share of nuclei tied; "
          "stability: Spearman with " + (out["stability_from"] or "no second model (single split; use --against)"))
    roles = role_rows(out)
    if roles:
        print()
        print(format_table(["class", "role", "auroc", "enrichment", "images"], roles))
        print("auroc: the scores rank the role above stroma (0.5 = chance); enrichment: share among the top 10% / "
              "share among all matched nuclei")
        print()
        print(format_table(list(COMPARTMENT_COLUMNS), compartment_rows(out)))
        print("probability of the predicted class with the image intact, without all its stroma, without all its "
              "structures (every other role): which compartment the model reads, whatever the scores say")
    print(f"recorded: evaluation {out['evaluation_id']} in SQL, and on the Explanation {out['key']}")
    return 0
