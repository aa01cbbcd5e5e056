"""A synthetic whole slide (issue 15 item 6): time, peak memory and a read-back through tiffslide.

Writes one slide with ``ingest.synth.synthesize_slide`` (a pyramidal JPEG TIFF drawn block by block by
the task's image generator) and prints the seconds, the peak RSS of this process (``ru_maxrss``: the
slide is written a row of blocks at a time, so it should grow with the width, not the area), the file
size, the nuclei and tissue share, then reads a 2048 x 2048 region (or the whole level, when smaller) at
every level with tiffslide, as ingest reads slides. Run one size per process so each peak is its own:

    ./.venv/bin/python bench/bench_synth_slide.py --task breast --size 8000x6000 [--json]
    ./.venv/bin/python bench/bench_synth_slide.py --task breast --size 40000x30000
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import tiffslide

from nucleograph.ingest.synth import TASKS, synthesize_slide


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=sorted(TASKS), default="breast")
    ap.add_argument("--label", default=None, help="default: the task's high class (regions of both classes)")
    ap.add_argument("--size", default="8000x6000", help="WIDTHxHEIGHT")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="folder to keep the files in (default: a temporary one)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    label = args.label or TASKS[args.task][-1]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"{args.task}_{label}_{width}x{height}.tif"
        t0 = time.perf_counter()
        truth = synthesize_slide(args.task, label, path, nuclei_path=path.with_suffix(".csv"),
                                 truth_path=out / (path.stem + ".regions.json"), rng=np.random.default_rng(args.seed),
                                 size=(width, height), progress=not args.json)
        seconds = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        slide = tiffslide.TiffSlide(path)
        reads = []
        for level, (w, h) in enumerate(slide.level_dimensions):
            t = time.perf_counter()
            down = slide.level_downsamples[level]
            rw, rh = min(2048, w), min(2048, h)  # centred, inside the level
            corner = (int((w - rw) / 2 * down), int((h - rh) / 2 * down))
            region = np.asarray(slide.read_region(corner, level, (rw, rh)))
            reads.append({"level": level, "size": [w, h], "read_s": round(time.perf_counter() - t, 3),
                          "mean_rgb": [round(float(v), 1) for v in region[..., :3].reshape(-1, 3).mean(0)]})
        result = {
            "task": args.task, "label": label, "size": [width, height], "seconds": round(seconds, 1),
            "peak_rss_mb": round(peak_mb), "file_mb": round(path.stat().st_size / 2**20, 1),
            "nuclei": truth.n_nuclei, "tissue_fraction": round(truth.tissue_fraction, 3),
            "regions": [(r["label"], r["nuclei"]) for r in truth.regions],
            "mpp": float(slide.properties["tiffslide.mpp-x"]), "levels": reads,
            "megapixels_per_s": round(width * height / 1e6 / seconds, 2),
        }
        slide.close()
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
