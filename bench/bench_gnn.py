"""Benchmark the RSF models on CPU.

(a) one training epoch over 200 synthetic graphs of 1,500 nuclei (``train_model`` with one epoch: the
    steps and the final prediction of every graph), twice in one process: the first also pays the
    process's one-time costs (the compiled CSR builders' cache, the BLAS's buffers), the second is what
    each epoch of a training run costs. Like the ``nucleograph`` command, the script keeps freed memory
    for reuse (``--default-allocator``: glibc as it is);
(b) sparse DGL RSF vs the dense ``N x N x L`` reference (gnn.dense) at N = 1,500: forward and
    forward+backward time ratio, and the largest absolute difference of the logits. Each side's
    adjacency (dense tensor; CSR matrices, ``RSFNet.adjacency``) is built before the timing.

Graphs: uniform random centroids in a square with ~26 px spacing, Delaunay edges shorter than
100 px, default edge channels, 16 random node features.

    ./.venv/bin/python bench/bench_gnn.py [--graphs 200] [--nodes 1500] [--json]
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
from scipy.spatial import Delaunay

from nucleograph.allocator import retain_freed_memory
from nucleograph.gnn.data import edge_channels, to_dgl
from nucleograph.gnn.dense import DenseRSFReference, to_dense
from nucleograph.gnn.keys import FEAT
from nucleograph.gnn.models import MODEL_NAMES, build_model, count_parameters
from nucleograph.gnn.train import TrainConfig, train_model
from nucleograph.ingest.graph import DEFAULT_THRESHOLD_PX

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402


def synthetic_graph(n: int, *, rng, n_feats: int = 16, max_distance: float = DEFAULT_THRESHOLD_PX):
    """Random nuclei with Delaunay edges (< max_distance px): a stand-in for an H&E tile."""
    pts = rng.uniform(0, 26.0 * np.sqrt(n), size=(n, 2))
    tri = Delaunay(pts).simplices
    pairs = np.concatenate([tri[:, [0, 1]], tri[:, [1, 2]], tri[:, [0, 2]]])
    pairs = np.unique(np.sort(pairs, 1), axis=0)
    d = np.linalg.norm(pts[pairs[:, 0]] - pts[pairs[:, 1]], axis=1)
    pairs, d = pairs[d < max_distance], d[d < max_distance]
    return to_dgl(rng.normal(size=(n, n_feats)), pairs[:, 0], pairs[:, 1], edge_channels(d), centroids=pts)


def forward_macs(model, n: int, e: int, *, dense: bool = False) -> float:
    """Multiply-adds of one RSF forward pass on a graph of ``n`` nodes and ``e`` directed edges, in the
    order each side computes it: the sparse model aggregates over the ``e`` edges, weights first where a
    layer narrows; the dense reference multiplies ``L`` ``n x n`` matrices and aggregates first.
    Batch norm, softmax and element-wise work are left out; RSF+Edge's edge convolutions too."""
    L, f0 = model.edge_channels, model.in_feats
    (c1, c2, c3), (k, p2), (f1, f2) = model.conv_feats, model.pool_sizes, model.fc_feats

    def agg(width):  # A_l X for every channel
        return L * n * n * width if dense else e * width * L

    def conv(fi, fo):
        if fi > fo and not dense:
            return n * fi * fo * (L + 1) + agg(fo)
        return agg(fi) + n * (L + 1) * fi * fo

    pool1 = agg(k) + k * n * c2 + L * k * n * k  # A S, S^T V, S^T (A S)
    head = (k * c2 * (L + 1) * c3 + L * k * k * c3 + k * c3 * (L + 1) * p2 + L * k * k * p2 + L * p2 * k * p2
            + p2 * c3 * f1 + f1 * f2 + f2 * model.n_classes)
    embed = conv(c2, k) if not dense else agg(c2) + n * (L + 1) * c2 * k
    return float(conv(f0, c1) + conv(c1, c2) + embed + pool1 + head)


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graphs", type=int, default=200)
    ap.add_argument("--nodes", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--default-allocator", action="store_true",
                    help="leave glibc's malloc as it is (the nucleograph command keeps freed memory for reuse)")
    args = ap.parse_args(argv)
    tuned = False if args.default_allocator else retain_freed_memory()
    rng = np.random.default_rng(0)
    facts = machine.describe()
    out = {"threads": torch.get_num_threads(), "nodes": args.nodes, "loadavg_start": os.getloadavg()[0],
           "machine": facts, "allocator_retains_freed_memory": tuned}

    # (a) one epoch
    graphs = [synthetic_graph(args.nodes, rng=rng) for _ in range(args.graphs)]
    labels = np.arange(args.graphs) % 2
    out["edges_per_node"] = graphs[0].num_edges() / args.nodes
    epochs = []
    for _ in range(2):  # cold, then warm
        t = time.perf_counter()
        res = train_model(
            graphs,
            labels,
            TrainConfig(model_name="rsf", epochs=1, batch_size=args.batch_size),
            split=(np.arange(args.graphs), [], []),
        )
        epochs.append(time.perf_counter() - t)
    out["epoch_first_s"], out["epoch_s"] = epochs
    out["epoch_graphs"] = args.graphs
    out["parameters"] = res.n_parameters

    # (b) sparse vs dense at N
    g = graphs[0]
    model = build_model("rsf", in_feats=16, edge_channels=2)
    model.eval()
    ref = DenseRSFReference(model)
    # both sides get their adjacency built outside the timing: the dense tensor, and the CSR matrices
    adj, feat, mask = to_dense(g, g.ndata[FEAT])
    csr = model.adjacency(g)
    with torch.no_grad():
        diff = float((model(g) - ref(adj, feat, mask)).abs().max())
        t_sparse = _best(lambda: model(g, adjacency=csr), args.repeats)
        t_dense = _best(lambda: ref(adj, feat, mask), args.repeats)

    def fb_sparse():
        model.zero_grad()
        model(g, adjacency=csr).sum().backward()

    def fb_dense():
        model.zero_grad()
        ref(adj, feat, mask).sum().backward()

    model.train()
    t_sparse_fb = _best(fb_sparse, args.repeats)
    t_dense_fb = _best(fb_dense, args.repeats)
    out.update(
        forward_sparse_s=t_sparse,
        forward_dense_s=t_dense,
        forward_ratio=t_dense / t_sparse,
        fwd_bwd_sparse_s=t_sparse_fb,
        fwd_bwd_dense_s=t_dense_fb,
        fwd_bwd_ratio=t_dense_fb / t_sparse_fb,
        max_abs_diff=diff,
        forward_macs_sparse=forward_macs(model, g.num_nodes(), g.num_edges()),
        forward_macs_dense=forward_macs(model, g.num_nodes(), g.num_edges(), dense=True),
        param_counts={
            n: count_parameters(build_model(n, in_feats=16, edge_channels=2))
            for n in MODEL_NAMES
        },
    )
    out["loadavg_end"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(out))
    else:
        print(machine.header(facts))
        print(
            f"load average {out['loadavg_start']:.1f} -> {out['loadavg_end']:.1f} (other processes skew timings)"
        )
        print(
            f"CPU threads: {out['threads']}; {args.nodes} nodes, {out['edges_per_node']:.2f} directed edges/node"
        )
        print(
            f"(a) one training epoch, {args.graphs} graphs, batch {args.batch_size}: {out['epoch_s']:.2f} s "
            f"(the process's first: {out['epoch_first_s']:.2f} s)"
        )
        print(
            f"(b) forward          sparse {t_sparse * 1e3:8.1f} ms   dense {t_dense * 1e3:8.1f} ms   ratio {out['forward_ratio']:.1f}x"
        )
        print(
            f"    forward+backward sparse {t_sparse_fb * 1e3:8.1f} ms   dense {t_dense_fb * 1e3:8.1f} ms   ratio {out['fwd_bwd_ratio']:.1f}x"
        )
        ms, md = out["forward_macs_sparse"], out["forward_macs_dense"]
        print(f"    sparse forward  {machine.share(ms, t_sparse, facts)}   dense forward  {machine.share(md, t_dense, facts)}")
        print(f"    sparse fwd+bwd  {machine.share(3 * ms, t_sparse_fb, facts)}   dense fwd+bwd  "
              f"{machine.share(3 * md, t_dense_fb, facts)}")
        print(f"    multiply-adds, dense / sparse forward: {md / ms:.0f}x")
        print(f"    max |sparse - dense| logits: {diff:.2e}")
        print(f"    parameters: {out['param_counts']}")
    return out


if __name__ == "__main__":
    dgl.seed(0)
    main()
