"""Benchmark the explainers per image: occlusion, gradient x input, integrated gradients, GNNExplainer,
local evidence (with its tie-break and without it: the bare formula) and local contribution.

Each method explains the same graph of about 1,500 nuclei (``--graph`` as in bench_occlusion.py:
``delaunay``, ``image`` or ``synth-breast``) with the same model (random weights, batch-norm statistics
from a few synthetic batches, as bench_occlusion.py builds it). Reported per method: wall seconds and
CPU seconds of the process (``time.process_time``, all threads; median of ``--repeats`` runs, one run
for GNNExplainer unless ``--repeats-gnnexplainer``), the share of nuclei whose score ties another's,
and for integrated gradients the completeness gap ``|sum(scores) - (f(x) - f(baseline))|`` next to
``|f(x) - f(baseline)|``.

    ./.venv/bin/python bench/bench_attribution.py [--nodes 1500] [--model rsf] [--graph delaunay]
        [--threads 1] [--steps 32] [--ig-batch 8] [--epochs 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import dgl
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_occlusion import GRAPHS  # noqa: E402

from nucleograph.gnn.attribution import (  # noqa: E402
    gnnexplainer_scores,
    gradient_x_input,
    integrated_gradients,
    log_odds,
)
from nucleograph.gnn.contribution import local_contribution  # noqa: E402
from nucleograph.gnn.explain import occlusion  # noqa: E402
from nucleograph.gnn.faithfulness import tie_share  # noqa: E402
from nucleograph.gnn.keys import FEAT  # noqa: E402
from nucleograph.gnn.local import local_evidence  # noqa: E402
from nucleograph.gnn.models import build_model  # noqa: E402


def _timed(fn, repeats: int) -> tuple[float, float, np.ndarray]:
    """Median wall and CPU seconds of ``repeats`` calls, and the last result."""
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return float(np.median(walls)), float(np.median(cpus)), out


def _log_odds_at(model, g, feat, c: int) -> float:
    with torch.no_grad(), g.local_scope():
        g.ndata[FEAT] = feat
        return float(log_odds(model(g), c)[0])


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1500)
    ap.add_argument("--model", default="rsf")
    ap.add_argument("--graph", choices=sorted(GRAPHS), default="delaunay")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--steps", type=int, default=32, help="integrated gradients' path points")
    ap.add_argument("--ig-batch", type=int, default=8, help="path points per model pass")
    ap.add_argument("--epochs", type=int, default=100, help="GNNExplainer's epochs")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--repeats-gnnexplainer", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    make = GRAPHS[args.graph]
    g = make(args.nodes, rng=rng)
    model = build_model(args.model, in_feats=16, edge_channels=2)
    model.train()  # batch norm with non-trivial running statistics, as after training
    with torch.no_grad():
        for _ in range(5):
            model(dgl.batch([make(args.nodes, rng=rng) for _ in range(2)]))
    model.eval()
    occlusion(model, g, hops=1)  # loads the compiled index code once per process, not timed

    methods = {
        "occlusion_k1": (lambda: occlusion(model, g, hops=1), args.repeats),
        "gradxinput": (lambda: gradient_x_input(model, g), args.repeats),
        "ig": (lambda: integrated_gradients(model, g, steps=args.steps, batch_size=args.ig_batch), args.repeats),
        "gnnexplainer": (lambda: gnnexplainer_scores(model, g, epochs=args.epochs), args.repeats_gnnexplainer),
        "local_bare": (lambda: local_evidence(model, g, tie_break=False), args.repeats),
        "local": (lambda: local_evidence(model, g), args.repeats),
        "contribution": (lambda: local_contribution(model, g), args.repeats),
    }
    out = {"model": args.model, "graph": args.graph, "nodes": g.num_nodes(), "edges": g.num_edges(),
           "threads": torch.get_num_threads(), "steps": args.steps, "ig_batch": args.ig_batch,
           "epochs": args.epochs, "methods": {}}
    for name, (fn, repeats) in methods.items():
        wall, cpu, scores = _timed(fn, repeats)
        out["methods"][name] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "repeats": repeats,
                                "finite": bool(np.isfinite(scores).all()), "ties": round(tie_share(scores), 4)}
        if name == "ig":
            with torch.no_grad():
                c = int(model(g).argmax())
            x = g.ndata[FEAT]
            delta = _log_odds_at(model, g, x, c) - _log_odds_at(model, g, model.feat_mean.expand_as(x), c)
            out["methods"][name].update(delta=round(abs(delta), 5),
                                        completeness_gap=round(abs(float(scores.sum()) - delta), 5))
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{out['model']} on {out['graph']}: {out['nodes']} nuclei, {out['edges']} edges, "
              f"{out['threads']} thread(s)")
        for name, r in out["methods"].items():
            extra = (f"  |f(x)-f(b)| {r['delta']}, completeness gap {r['completeness_gap']}"
                     if name == "ig" else "")
            print(f"  {name:13s} wall {r['wall_s']:8.3f} s   cpu {r['cpu_s']:8.3f} s   ties {r['ties']:.2%}{extra}")
    return out


if __name__ == "__main__":
    main()
