"""The `nucleograph` command line (subcommands are registered by each package's cli module)."""

import sys


def main(argv=None) -> int:
    print("nucleograph: CLI under construction", file=sys.stderr)
    return 2
