"""Benchmark occlusion explanations: naive (one model run per nucleus) vs fast (gnn.explain.occlusion).

Both are timed on the same graph of 1,500 nuclei: ``--graph delaunay`` (bench_gnn.synthetic_graph,
Delaunay edges, about 6 neighbours per nucleus) or ``--graph image`` (nuclei spread over a 2048x1536
BACH-sized tile, joined like ``nucleograph ingest`` joins them: every pair closer than 100 px, about 15
neighbours each; larger neighbourhoods, so less for the fast path to skip) or ``--graph synth-breast``
(the nuclei of one synthetic breast tile, clustered in ducts and cords, about 1,600 of them). By default the naive
loop runs on every nucleus; ``--naive-subset K`` times it on the first K nuclei only and extrapolates
linearly to all N (reported as ``naive_extrapolated: true``). The max abs difference is over the
nuclei both computed.

    ./.venv/bin/python bench/bench_occlusion.py [--nodes 1500] [--hops 1] [--model rsf]
        [--graph delaunay|image|synth-breast] [--output logodds|prob] [--json]

``--output`` picks what both sides score: the drop of the class's log-odds (the default) or of its
probability.

The fast path is timed ``--repeats`` times, each run followed by a slice of the naive loop (so a
change of the machine's speed during the benchmark affects both); the ratio uses the median
(``ratio``) and the best (``ratio_best``) fast run against the whole naive loop. The first fast call
in the process runs before them and is reported apart (``fast_first_call_s``): it also loads the
compiled index code, once per process.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import dgl
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
from bench_gnn import synthetic_graph  # noqa: E402

from nucleograph.allocator import retain_freed_memory  # noqa: E402
from nucleograph.db.runs import OUTPUTS  # noqa: E402
from nucleograph.gnn.data import edge_channels, to_dgl  # noqa: E402
from nucleograph.gnn.explain import occlusion  # noqa: E402
from nucleograph.gnn.models import build_model  # noqa: E402
from nucleograph.gnn.occlusion.reference import (  # noqa: E402
    graph_value,
    hop_ball,
    proba,
    without,
)
from nucleograph.ingest.graph import build_edges  # noqa: E402


def image_graph(n: int, *, rng, n_feats: int = 16, size=(2048, 1536), threshold: float = 100.0):
    """``n`` nuclei uniform over a ``size`` tile, joined as ingest joins them (all pairs < threshold)."""
    pts = rng.uniform((0, 0), size, size=(n, 2))
    e = build_edges(pts, threshold=threshold)
    return to_dgl(rng.normal(size=(n, n_feats)), e["src"], e["dst"], edge_channels(e["dist"], max_distance=threshold),
                  centroids=pts)


def synth_graph(n: int, *, rng, n_feats: int = 16, threshold: float = 100.0):
    """The ground-truth nuclei of one synthetic 2048x1536 breast tile (``ingest.synth``, about 1,600
    nuclei in ducts, cords and stroma; ``n`` is ignored), joined as ingest joins them."""
    from nucleograph.ingest.synth import synthesize_image

    tile = synthesize_image("breast", "Invasive" if rng.random() < 0.5 else "InSitu", rng=rng)
    pts = tile.nuclei[["centroid_x", "centroid_y"]].to_numpy(float)
    e = build_edges(pts, threshold=threshold)
    return to_dgl(rng.normal(size=(len(pts), n_feats)), e["src"], e["dst"],
                  edge_channels(e["dist"], max_distance=threshold), centroids=pts)


GRAPHS = {"delaunay": synthetic_graph, "image": image_graph, "synth-breast": synth_graph}


def operation_counts(model, g, hops: int) -> tuple[float, float]:
    """Multiply-adds of the naive loop and of the fast path, counted on ``g``'s actual balls.

    Fast, per occlusion: VConv1, VConv2 and the assignment convolution on the kept rows they change,
    weights first (``W_0`` and the ``L`` edge weights on the changed input rows, the ``L`` edge weights on
    the removed rows), the pooling products over the ball and the head. Naive: one forward pass over the remaining nuclei (aggregation on the
    narrower side) and the head. Batch norm, softmax and element-wise work are left out on both sides,
    and so are RSF+Edge's edge convolutions and RSF+Attention's gate (the same work per occlusion on both
    sides).
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    f0, (c1, c2, _), K, L = model.in_feats, model.conv_feats, model.pool1.n_clusters, model.edge_channels
    c3, p2 = model.conv_feats[2], model.pool_sizes[1]
    f1, f2 = model.fc_feats
    head = (K * c2 * (L + 1) * c3 + L * K * K * c3 + K * c3 * (L + 1) * p2 + L * K * K * p2 + L * p2 * K * p2
            + p2 * c3 * f1 + f1 * f2 + f2 * model.n_classes)

    def conv(rows_in, rows_out, edges, fi, fo):  # the cheaper order of a whole-graph RSF convolution
        return min(rows_in * fi * fo * (L + 1) + edges * fo * L, rows_in * fi * fo + edges * fi * L + rows_out * L * fi * fo)

    src, dst = (t.numpy() for t in g.edges())
    n = g.num_nodes()
    dist = dijkstra(csr_matrix((np.ones(len(src)), (src, dst)), shape=(n, n)), unweighted=True, limit=hops + 3.5)
    fast, naive = 0.0, 0.0
    for d in dist:
        ds, dd = d[src], d[dst]  # directed edge src -> dst; symmetric graph: in-edges of dst
        n_rem, n1, n2, n3 = ((d <= hops + k).sum() for k in range(4))
        kept = dd > hops
        e0, e1, e2 = ((kept & (dd <= hops + k + 1) & (ds <= hops + k)).sum() for k in range(3))
        e3 = ((dd <= hops + 3) & (ds <= hops + 3)).sum()
        fast += (n_rem * L * (f0 * c1 + c1 * c2 + c2 * K)  # the removed rows' projections
                 + e0 * c1 * L + (n1 - n_rem) * c1 * c2 * (L + 1) + e1 * c2 * L
                 + (n2 - n_rem) * c2 * K * (L + 1) + e2 * K * L
                 + n3 * K * (c2 + L * K) + e3 * K * L + (n2 - n_rem) * K * c2 + head)
        m, e = n - n_rem, ((ds > hops) & (dd > hops)).sum()
        naive += (conv(m, m, e, f0, c1) + conv(m, m, e, c1, c2) + conv(m, m, e, c2, K)
                  + m * K * (c2 + L * K) + e * K * L + head)
    return float(naive), float(fast)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=1500)
    ap.add_argument("--hops", type=int, default=1)
    ap.add_argument("--model", default="rsf")
    ap.add_argument("--graph", choices=sorted(GRAPHS), default="delaunay")
    ap.add_argument("--output", choices=OUTPUTS, default="logodds", help="what the occlusion scores measure")
    ap.add_argument(
        "--naive-subset", type=int, default=0, help="time naive on this many nuclei and extrapolate"
    )
    ap.add_argument("--repeats", type=int, default=5, help="fast runs (median and best reported)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--default-allocator", action="store_true",
        help="leave glibc's malloc as it is (the nucleograph command keeps freed memory for reuse)",
    )
    ap.add_argument(
        "--checkpoint", default=None,
        help="a trained model (runs/RUN/foldK/model.pt) instead of a random one; needs --graph-file",
    )
    ap.add_argument(
        "--graph-file", default=None,
        help="a cohort's graph cache (HOME/cache/graphs-*.bin, written by training): the graph with the "
        "number of nuclei closest to --nodes is explained",
    )
    args = ap.parse_args(argv)
    if (args.checkpoint is None) != (args.graph_file is None):
        ap.error("--checkpoint and --graph-file go together (a trained model and graphs with its features)")
    tuned = False if args.default_allocator else retain_freed_memory()
    facts = machine.describe()
    rng = np.random.default_rng(0)
    dgl.seed(0)
    torch.manual_seed(0)
    if args.checkpoint:
        from nucleograph.gnn.checkpoints import load_checkpoint

        model, _, config = load_checkpoint(args.checkpoint)
        args.model, args.graph = config["model_name"], f"cached ({Path(args.graph_file).name})"
        graphs, _ = dgl.load_graphs(args.graph_file)
        g = min(graphs, key=lambda gr: abs(gr.num_nodes() - args.nodes))
    else:
        make = GRAPHS[args.graph]
        g = make(args.nodes, rng=rng)
        model = build_model(args.model, in_feats=16, edge_channels=2)
        # give batch norm non-trivial running statistics, as after training
        model.train()
        with torch.no_grad():
            for _ in range(5):
                model(dgl.batch([make(args.nodes, rng=rng) for _ in range(2)]))
    model.eval()

    # the naive loop runs in slices between the fast runs, so that a drift of the machine's speed
    # (on this shared machine the naive loop alone varied from 6.7 s to 10.7 s within an hour) weighs on
    # both sides alike
    n = g.num_nodes()
    subset = args.naive_subset if 0 < args.naive_subset < n else n
    slices = np.array_split(np.arange(subset), args.repeats)
    naive = np.empty(subset)
    fast_times, t_naive = [], 0.0
    with torch.no_grad():
        t = time.perf_counter()
        p0 = proba(model, g)
        c = int(np.argmax(p0))
        v0 = graph_value(model, g, c, args.output)
        t_naive += time.perf_counter() - t
    # the first call in a process also loads the compiled index code (numba's on-disk cache, about 0.3 s
    # once per process, not per image): timed apart, not among the runs
    t = time.perf_counter()
    occlusion(model, g, hops=args.hops, output=args.output)
    t_first = time.perf_counter() - t
    for part in slices:
        t = time.perf_counter()
        fast = occlusion(model, g, hops=args.hops, output=args.output)
        fast_times.append(time.perf_counter() - t)
        with torch.no_grad():
            t = time.perf_counter()
            for i in part:
                naive[i] = v0 - graph_value(model, without(g, hop_ball(g, int(i), args.hops)), c, args.output)
            t_naive += time.perf_counter() - t
    t_fast, t_fast_best = float(np.median(fast_times)), min(fast_times)
    t_naive_all = t_naive * n / subset
    out = {
        "model": args.model,
        "graph": args.graph,
        "mean_degree": g.num_edges() / g.num_nodes(),
        "nodes": n,
        "hops": args.hops,
        "output": args.output,
        "threads": torch.get_num_threads(),
        "allocator_retains_freed_memory": tuned,
        "loadavg": os.getloadavg()[0],
        "naive_s": t_naive_all,
        "naive_extrapolated": subset < n,
        "naive_nodes_timed": subset,
        "fast_s": t_fast,
        "fast_best_s": t_fast_best,
        "fast_first_call_s": t_first,
        "ratio": t_naive_all / t_fast,
        "ratio_best": t_naive_all / t_fast_best,
        "max_abs_diff": float(np.abs(naive - fast[:subset]).max()),
        "max_abs_score": float(np.abs(fast).max()),
        "machine": facts,
    }
    naive_macs, fast_macs = operation_counts(model, g, args.hops) if hasattr(model, "pool1") else (None, None)
    out.update(operation_ratio=naive_macs / fast_macs if naive_macs else None, naive_macs=naive_macs,
               fast_macs=fast_macs)
    if args.json:
        print(json.dumps(out))
    else:
        extra = f" (timed on {subset} nuclei, extrapolated)" if out["naive_extrapolated"] else ""
        print(machine.header(facts))
        print(f"load average {out['loadavg']:.1f} (other processes skew timings)")
        print(f"{args.model}, {args.graph} graph, N={n} ({out['mean_degree']:.1f} neighbours each), "
              f"hops={args.hops}, output={args.output}, {out['threads']} CPU threads")
        print(f"naive {t_naive_all:.1f} s{extra}   fast {t_fast:.2f} s (median of {args.repeats}; "
              f"best {t_fast_best:.2f} s)   ratio {out['ratio']:.1f}x (best {out['ratio_best']:.1f}x)")
        print(f"first fast call in this process {t_first:.2f} s (loads the compiled index code once)")
        print(f"max |naive - fast| = {out['max_abs_diff']:.2e} (max |score| {out['max_abs_score']:.2e})")
        if out["operation_ratio"]:
            print(f"multiply-adds, naive / fast: {out['operation_ratio']:.1f}x (the ratio if both ran at one rate); "
                  f"naive {machine.share(naive_macs, t_naive_all, facts)}, fast {machine.share(fast_macs, t_fast, facts)}")
    return out


if __name__ == "__main__":
    main()
