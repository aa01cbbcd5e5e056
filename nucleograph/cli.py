"""The `nucleograph` command line. Each package registers its own subcommands."""

from __future__ import annotations

import argparse
import sys

from nucleograph import __version__
from nucleograph.allocator import retain_freed_memory
from nucleograph.config import Settings
from nucleograph.errors import NucleographError


def build_parser() -> argparse.ArgumentParser:
    from nucleograph.db import cli as db_cli

    parser = argparse.ArgumentParser(
        prog="nucleograph",
        description="Interpretable graph neural networks on H&E images, nucleus by nucleus, in Neo4j.",
    )
    parser.add_argument("--version", action="version", version=f"nucleograph {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    db_cli.register(sub)
    for name in ("nucleograph.ingest.cli", "nucleograph.gnn.cli", "nucleograph.dashboard.cli", "nucleograph.jobs.cli"):
        module = _optional_module(name)
        if module is not None:
            module.register(sub)
    return parser


def _optional_module(name: str):
    import importlib
    import importlib.util

    if importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name)


def main(argv: list[str] | None = None) -> int:
    retain_freed_memory()  # PyTorch's per-batch tensors: reuse freed memory instead of page-faulting
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        return int(args.func(args, settings) or 0)
    except NucleographError as exc:
        print(f"nucleograph: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `nucleograph scores ... | head`: the reader left, not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("nucleograph: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
