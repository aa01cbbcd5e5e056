"""The candidate kernels for the sparse RSF products and the occlusion path's gathers, side by side.

(a) ``[X, A_1 X, ..., A_L X]`` for a 1,500-node graph (``--graph delaunay``: about 6 in-edges per
    node; ``image``: the ingest radius graph, about 14), ``L = 2`` channels, float32, per feature
    width: the interleaved CSR matrix that ``gnn.layers.spmm`` multiplies (one MKL product), one CSR
    product per channel stacked afterwards (the layer before issue 20), scipy's CSR product, DGL's
    GSpMM (``update_all(u_mul_e, sum)``), an ``index_add_`` scatter of the gathered rows, and a COO
    product. The backward pass multiplies the transposed matrix of the same kind, so one direction
    stands for both.
(b) building the matrices for one graph: the interleaved matrices and their transposes (compiled)
    against the per-channel ones.
(c) row gathers as the occlusion path takes them (25,000 rows of a 1,500-row table): torch
    ``index_select`` into a buffer, without one, advanced indexing and numpy ``take``.

Each figure is the median of ``--repeats`` calls after a warm-up, with multiply-adds per second and
the share of the machine's dense GEMM rate (``machine.py``); the CPU and backends are printed first.

    ./.venv/bin/python bench/bench_kernels.py [--graph delaunay|image] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import dgl
import dgl.function as fn
import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine  # noqa: E402
from bench_gnn import synthetic_graph  # noqa: E402
from bench_occlusion import image_graph  # noqa: E402

from nucleograph.gnn.keys import EFEAT  # noqa: E402
from nucleograph.gnn.layers.spmm import csr_adjacency, csr_matrix, neighbour_stack  # noqa: E402

WIDTHS = (16, 32, 64, 128)


def _median_us(fn_, repeats: int) -> float:
    for _ in range(5):
        fn_()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn_()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e6


def per_channel(graph, efeat):
    """One CSR matrix per channel, as the layer built them before (and its build time is (b)'s)."""
    ptr, idx, eid = graph.adj_tensors("csc")
    vals = efeat[eid.long()]
    n = graph.num_nodes()
    return [csr_matrix(ptr, idx, vals[:, ch].contiguous(), (n, n)) for ch in range(efeat.shape[1])]


def _product_kernels(graph, efeat, x, *, adjacency, mats, scipy_mats, coo) -> dict:
    """(a)'s kernels on the features ``x``: name -> a call that returns ``(N, L+1, F)``."""
    n, ell = graph.num_nodes(), efeat.shape[1]
    src, dst = (t.long() for t in graph.edges())
    xn = x.numpy()

    def gspmm():
        with graph.local_scope():
            graph.srcdata["h"], graph.edata["a"] = x.unsqueeze(1), efeat.unsqueeze(-1)
            graph.update_all(fn.u_mul_e("h", "a", "m"), fn.sum("m", "h"))
            return torch.cat([x.unsqueeze(1), graph.dstdata["h"]], 1)

    def scatter():
        rows = x[src]
        return torch.stack([x] + [torch.zeros(n, x.shape[1]).index_add_(0, dst, rows * efeat[:, ch:ch + 1])
                                  for ch in range(ell)], 1)

    return {
        "interleaved MKL CSR (used)": lambda: neighbour_stack(graph, efeat, x, adjacency=adjacency),
        "per-channel MKL CSR + stack": lambda: torch.stack([x] + [m @ x for m in mats], 1),
        "scipy CSR": lambda: np.stack([xn] + [m @ xn for m in scipy_mats], 1),
        "DGL GSpMM": gspmm,
        "index_add_ scatter": scatter,
        "COO (torch.sparse.mm)": lambda: torch.stack([x] + [torch.sparse.mm(m, x) for m in coo], 1),
    }


def products(graph, efeat, repeats: int) -> dict[int, dict[str, float]]:
    """(a): microseconds per kernel and feature width."""
    n, (e, ell) = graph.num_nodes(), efeat.shape
    adjacency = csr_adjacency(graph, efeat)
    mats = per_channel(graph, efeat)
    ptr, idx, eid = (t.numpy() for t in graph.adj_tensors("csc"))
    scipy_mats = [sp.csr_matrix((efeat[eid, ch].numpy(), idx, ptr), shape=(n, n)) for ch in range(ell)]
    coo = [m.to_sparse_coo() for m in mats]
    out: dict[int, dict[str, float]] = {}
    for width in WIDTHS:
        x = torch.randn(n, width)
        kernels = _product_kernels(graph, efeat, x, adjacency=adjacency, mats=mats, scipy_mats=scipy_mats, coo=coo)
        reference = neighbour_stack(graph, efeat, x, adjacency=adjacency)
        for name, kernel in kernels.items():
            if not torch.allclose(torch.as_tensor(kernel()), reference, atol=1e-4):
                raise AssertionError(f"{name} disagrees with the interleaved product")
        out[width] = {name: _median_us(kernel, repeats) for name, kernel in kernels.items()}
        out[width]["_macs"] = float(e * ell * width)
    return out


def builds(graph, efeat, repeats: int) -> dict[str, float]:
    """(b): microseconds to build each kind of matrices (with their transposes where a layer keeps them)."""
    def old():
        per_channel(graph, efeat)
        ptr, idx, eid = graph.adj_tensors("csr")
        vals, n = efeat[eid.long()], graph.num_nodes()
        return [csr_matrix(ptr, idx, vals[:, ch].contiguous(), (n, n)) for ch in range(efeat.shape[1])]

    def new(transposes: bool):
        adjacency = csr_adjacency(graph, efeat)
        if transposes:  # what a training step builds; inference stops at the two matrices
            adjacency.transposes.get("stack")

    return {"interleaved, inference (stack, combine)": _median_us(lambda: new(False), repeats),
            "interleaved, training (and their transposes)": _median_us(lambda: new(True), repeats),
            "per channel (A_l and A_l^T, the layer before)": _median_us(old, repeats)}


def _gather_kernels(table, index) -> dict:
    buf = table.new_empty(index.numel(), table.shape[1])
    return {
        "index_select into a buffer": lambda: torch.index_select(table, 0, index, out=buf),
        "index_select": lambda: torch.index_select(table, 0, index),
        "advanced indexing t[i]": lambda: table[index],
        "numpy take": lambda: np.take(table.numpy(), index.numpy(), axis=0),
    }


def gathers(repeats: int) -> dict[str, dict[str, float]]:
    """(c): microseconds per row gather, float32 and float64 tables of 192 columns."""
    index = torch.from_numpy(np.random.default_rng(0).integers(0, 1500, 25_000))
    return {str(dtype).removeprefix("torch."): {
        name: _median_us(kernel, repeats)
        for name, kernel in _gather_kernels(torch.randn(1500, 192, dtype=dtype), index).items()}
        for dtype in (torch.float32, torch.float64)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graph", choices=("delaunay", "image"), default="delaunay")
    ap.add_argument("--nodes", type=int, default=1500)
    ap.add_argument("--repeats", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    graph = (synthetic_graph if args.graph == "delaunay" else image_graph)(args.nodes, rng=rng)
    efeat = graph.edata[EFEAT]
    facts = machine.describe()
    result = {"machine": facts, "graph": args.graph, "nodes": graph.num_nodes(), "edges": graph.num_edges(),
              "products_us": products(graph, efeat, args.repeats), "builds_us": builds(graph, efeat, args.repeats),
              "gathers_us": gathers(args.repeats)}
    if args.json:
        print(json.dumps(result))
        return result
    print(machine.header(facts))
    print(f"{args.graph} graph: {result['nodes']} nodes, {result['edges']} directed edges, 2 channels, float32")
    print("(a) [X, A_1 X, A_2 X], microseconds (GMAC/s, share of GEMM)")
    for width, row in result["products_us"].items():
        macs = row["_macs"]
        cells = "  ".join(f"{name} {us:.0f}" for name, us in row.items() if not name.startswith("_"))
        best = min((us, name) for name, us in row.items() if not name.startswith("_"))
        print(f"  F={width:<4} {cells}")
        print(f"         fastest: {best[1]} ({machine.share(macs, best[0] * 1e-6, facts)})")
    print("(b) building the matrices of one graph, microseconds: "
          + "; ".join(f"{k} {v:.0f}" for k, v in result["builds_us"].items()))
    print("(c) gathering 25,000 of 1,500 rows x 192 columns, microseconds")
    for dtype, row in result["gathers_us"].items():
        print(f"  {dtype}: " + "; ".join(f"{k} {v:.0f}" for k, v in row.items()))
    return result


if __name__ == "__main__":
    dgl.seed(0)
    main()
