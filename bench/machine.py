"""What a benchmark figure was measured on: the CPU, the BLAS and sparse backends, and the machine's
measured dense GEMM rate, the physical reference against which a kernel's multiply-adds per second are
read (a sparse or gather-bound kernel reaching 10% of it is doing well; 1% means overhead dominates).

Used by ``bench_gnn.py``, ``bench_occlusion.py`` and ``bench_kernels.py``; run alone it prints the
facts:

    ./.venv/bin/python bench/machine.py
"""

from __future__ import annotations

import platform
import re
import time
from pathlib import Path

import torch


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), with its family/model numbers where the name lacks
    them (virtual machines often report only "AMD EPYC")."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    fields = dict(re.findall(r"^(model name|cpu family|model|vendor_id)\s*:\s*(.+)$", info, re.M))
    name = fields.get("model name", platform.processor() or "unknown CPU").strip()
    return f"{name} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"


def backends() -> dict[str, str]:
    """torch's BLAS, the sparse CSR product's library, the vector ISA ATen dispatches to, threads."""
    config = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([\d.]+)", config)
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    return {
        "blas": f"{blas.group(1) if blas else 'unknown'}" + (f" {mkl.group(1)}" if mkl else ""),
        # torch's CPU addmm of a sparse CSR matrix calls MKL's sparse BLAS when torch was built with MKL
        "sparse_csr": "MKL sparse BLAS (mkl_sparse_s_mm)" if torch.backends.mkl.is_available() else "ATen native",
        "isa": torch.backends.cpu.get_cpu_capability(),
        "threads": str(torch.get_num_threads()),
    }


def gemm_rate(size: int = 1024, repeats: int = 30, dtype=torch.float32) -> float:
    """The best of ``repeats`` ``size``-cubed matrix products: multiply-adds per second at torch's
    current thread count (the best, not the median: on a shared virtual machine the rate drifts, and
    the best is the closest to what the cores can do)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b  # warm the BLAS's threads and buffers
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return size**3 / best


def describe() -> dict[str, object]:
    """Everything above in one dict (for ``--json`` outputs)."""
    return {"cpu": cpu_model(), **backends(), "gemm_macs_per_s": gemm_rate()}


def header(facts: dict[str, object]) -> str:
    """Two lines to print above a benchmark's figures."""
    return (
        f"CPU: {facts['cpu']}; ISA {facts['isa']}, {facts['threads']} torch threads\n"
        f"BLAS: {facts['blas']}; sparse CSR products: {facts['sparse_csr']}; "
        f"dense float32 GEMM (1024^3) {facts['gemm_macs_per_s'] / 1e9:.1f} GMAC/s"
    )


def share(macs: float, seconds: float, facts: dict[str, object]) -> str:
    """``macs`` done in ``seconds``, as GMAC/s and as a share of the measured GEMM rate."""
    rate = macs / seconds
    return f"{rate / 1e9:.2f} GMAC/s = {100 * rate / float(facts['gemm_macs_per_s']):.1f}% of GEMM"


if __name__ == "__main__":
    print(header(describe()))
