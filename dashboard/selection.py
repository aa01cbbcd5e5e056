"""What a click or lasso on a Plotly chart selected, decoded from Streamlit's selection state.

``st.plotly_chart(..., on_select="rerun")`` stores the browser's selection event in the session state
under the chart's key: ``{"selection": {"points": [{"customdata": ..., ...}], ...}}``. How a point's
``customdata`` arrives depends on how Plotly shipped it: plotly.py >= 6 sends a NumPy ``customdata``
as a typed array (base64 ``bdata`` + ``dtype``); plotly.js decodes it to a JavaScript ``Float64Array``
per point, which ``JSON.stringify`` writes as an object keyed by index (``{"0": 12, "1": 0.3}``), not
a list. A list (customdata sent as a list), a scalar and a still-encoded typed array are decoded too.
Pure functions: no Streamlit, no database.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# plotly.py's typed-array codes (plotly/_plotly_utils/utils.py), little-endian on the wire
_TYPED_ARRAY_DTYPES = {
    "i1": "<i1", "u1": "<u1", "u1c": "<u1", "i2": "<i2", "u2": "<u2", "i4": "<i4", "u4": "<u4",
    "f4": "<f4", "f8": "<f8",
}


def customdata_values(value: Any) -> list[Any]:
    """A point's ``customdata`` as a flat list, whatever form the browser sent it in.

    Parameters
    ----------
    value : list, dict, scalar or None
        A list or tuple (``[12, 0.3]``); an object keyed by index (``{"0": 12, "1": 0.3}``, a
        serialised typed array); an encoded typed array (``{"dtype": "f8", "bdata": "..."}``); or
        one scalar.

    Returns
    -------
    list
        The values in index order; empty when ``value`` is None, empty or not decodable.
    """
    if value is None:
        return []
    if isinstance(value, Mapping):
        if "bdata" in value and "dtype" in value:
            return _typed_array(value)
        items = []
        for k, v in value.items():
            if not (isinstance(k, str) and k.isdigit()) and not isinstance(k, int):
                return []  # not an index-keyed array: some other object
            items.append((int(k), v))
        return [v for _, v in sorted(items)]
    if isinstance(value, (str, bytes)):
        return [value]
    if isinstance(value, (Sequence, np.ndarray)):
        return list(np.asarray(value, dtype=object).ravel()) if isinstance(value, np.ndarray) else list(value)
    return [value]


def _typed_array(value: Mapping) -> list[Any]:
    dtype = _TYPED_ARRAY_DTYPES.get(str(value["dtype"]))
    if dtype is None:
        return []
    try:
        raw = base64.b64decode(str(value["bdata"]), validate=True)
        return np.frombuffer(raw, dtype=dtype).tolist()
    except (binascii.Error, ValueError):
        return []


def selected_nid(state: Any, *, nids: Sequence[int] | None = None) -> int | None:
    """The nucleus id of the first selected point that carries one, or None.

    The overlay (:func:`nucleograph.dashboard.plots.overlay`) gives each nucleus its ``nid`` as the
    first ``customdata`` value; points of other traces (edges, rings) carry none and are skipped.

    Parameters
    ----------
    state : Mapping or None
        The chart's selection state, ``st.session_state[key]`` (``{"selection": {"points": [...]}}``).
        Anything else (None, a missing or malformed selection) selects nothing.
    nids : sequence of int, optional
        The image's nucleus ids; a decoded id outside them selects nothing (a stale selection of
        another image, or a point that is not a nucleus).

    Returns
    -------
    int or None
        The nucleus id (``Nucleus.nid``; its ``uid`` is ``f"{image_id}:{nid}"``), or None.
    """
    if not isinstance(state, Mapping):
        return None
    selection = state.get("selection")
    points = selection.get("points") if isinstance(selection, Mapping) else None
    if not isinstance(points, Sequence) or isinstance(points, (str, bytes)):
        return None
    allowed = None if nids is None else set(nids)
    for point in points:
        if not isinstance(point, Mapping):
            continue
        values = customdata_values(point.get("customdata"))
        nid = _as_int(values[0]) if values else None
        if nid is not None and (allowed is None or nid in allowed):
            return nid
    return None


def _as_int(value: Any) -> int | None:
    """An integral number as int (12, 12.0, "12"); None for anything else (NaN, 12.5, "x", True)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    return None


def event_signature(state: Any) -> str:
    """A stable text of the selection event, so a page applies each event once, not on every rerun.

    Parameters
    ----------
    state : Mapping or None
        The chart's selection state.

    Returns
    -------
    str
        The selection as sorted JSON (``""`` when there is none).
    """
    selection = state.get("selection") if isinstance(state, Mapping) else None
    if not selection:
        return ""
    return json.dumps(selection, sort_keys=True, default=str)
