"""Printing results: a plain table for people, JSON for scripts; ``--help`` that shows defaults."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any


def emit_json(value: Any) -> None:
    """Print ``value`` as strict JSON: NaN and infinities become ``null`` (as JavaScript's
    ``JSON.stringify`` writes them), since Python's ``NaN``/``Infinity`` tokens are not JSON and
    strict readers (``jq``, browsers, other languages) refuse the whole document."""
    json.dump(finite_or_null(value), sys.stdout, indent=2, sort_keys=False, default=str, allow_nan=False)
    sys.stdout.write("\n")


def finite_or_null(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, Infinity), at any depth, replaced by None."""
    if isinstance(value, float):  # numpy's float64 too
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):  # arrays and numpy scalars
        return finite_or_null(value.tolist())
    return value


def positive_int(text: str) -> int:
    """An argparse ``type=`` for counts such as ``--limit``: a whole number of at least 1.

    Raises
    ------
    argparse.ArgumentTypeError
        Shown by argparse as ``argument --limit: ...`` with exit status 2.
    """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number; give 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive count; give 1 or more")
    return value


def format_table(columns: list[str], rows: list[dict[str, Any]], *, max_width: int = 60) -> str:
    """A fixed-width text table of ``rows`` (dicts keyed by ``columns``)."""

    def cell(v: Any) -> str:
        text = json.dumps(v, default=str) if isinstance(v, (dict, list)) else ("" if v is None else str(v))
        return text if len(text) <= max_width else text[: max_width - 1] + "…"

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` with each option's default, as ``(default: X)`` after its help text.

    argparse's :class:`~argparse.ArgumentDefaultsHelpFormatter` also prints ``(default: None)`` and
    ``(default: False)``, which say nothing (an unset option, a flag), and repeats a default the help
    already names; this one skips those.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default is argparse.SUPPRESS or "default" in text
                or not action.option_strings or isinstance(default, (list, tuple)) and not default):
            return text
        return f"{text} (default: %(default)s)".lstrip()
