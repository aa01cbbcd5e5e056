"""nucleograph.allocator: the glibc malloc settings the nucleograph command applies at start."""

import os
import subprocess
import sys

import pytest

PROBE = (
    "import resource, sys, torch\n"
    "from nucleograph.allocator import retain_freed_memory\n"
    "print(retain_freed_memory() if sys.argv[1] == 'tuned' else False)\n"
    "def batch():  # tensors of 64 KB to 10 MB alive together, as one occlusion batch allocates them\n"
    "    keep = [torch.ones(16_384 * (1 + (i * 37) % 160)) for i in range(40)]\n"
    "    return len(keep)\n"
    "for _ in range(3):\n"
    "    batch()\n"
    "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
    "for _ in range(20):\n"
    "    batch()\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
)


def _probe(mode, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | (env_extra or {})
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_freed_memory_is_reused_instead_of_page_faulted_again():
    applied, faults = _probe("tuned")
    assert applied
    # 20 batches touch ~100 MB each, 500,000 pages in all: reused memory faults almost none of them
    # (glibc's default, depending on its dynamic thresholds, faults up to a sixth of them again)
    assert faults < 10_000


def test_environment_settings_take_precedence():
    applied, _ = _probe("tuned", {"MALLOC_TRIM_THRESHOLD_": "131072"})
    assert not applied
