"""Decoding a click on the explorer's chart: the payload a real browser sent, and the other forms."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nucleograph.dashboard import plots
from nucleograph.dashboard.selection import customdata_values, event_signature, selected_nid

# st.session_state["explorer_chart"] after a real click in headless Chromium (see the file's _comment)
CLICK = json.loads((Path(__file__).parent / "plotly_click_selection.json").read_text())["state"]


def _with_customdata(value) -> dict:
    state = copy.deepcopy(CLICK)
    state["selection"]["points"][0]["customdata"] = value
    return state


def test_the_browsers_click_payload_names_its_nucleus():
    # customdata arrived as an index-keyed object: indexing it with [0] was the KeyError of issue 17
    assert isinstance(CLICK["selection"]["points"][0]["customdata"], dict)
    assert selected_nid(CLICK) == 56
    assert selected_nid(CLICK, nids=range(100)) == 56
    assert selected_nid(CLICK, nids=[1, 2, 3]) is None  # not a nucleus of this image


def test_list_index_object_and_typed_array_forms_decode_alike():
    row = [56.0, 0.79, 307.0]
    typed = {"dtype": "f8", "bdata": base64.b64encode(np.array(row, dtype="<f8").tobytes()).decode()}
    ints = {"dtype": "i4", "bdata": base64.b64encode(np.array([56, 1], dtype="<i4").tobytes()).decode(),
            "shape": "2"}
    for value in (row, tuple(row), {"0": 56, "1": 0.79, "2": 307}, {"2": 307, "0": 56, "1": 0.79}, typed, ints,
                  56, "56", np.array(row)):
        assert selected_nid(_with_customdata(value)) == 56, value
    assert customdata_values({"10": "b", "2": "a"}) == ["a", "b"]  # numeric, not text, order


def test_plotlys_own_typed_array_encoding_decodes():
    # what plotly.py puts on the wire for the overlay's customdata (a 2-D NumPy array)
    nuclei = pd.DataFrame({"nid": [7, 8], "x": [1.0, 2.0], "y": [1.0, 2.0], "area": [30.0, 40.0],
                           "score": [0.5, -0.1]})
    fig = json.loads(plots.overlay({"width": 10, "height": 10}, nuclei, source=None).to_json())
    custom = next(t for t in fig["data"] if t.get("name") == "nuclei")["customdata"]
    assert isinstance(custom, dict) and "bdata" in custom
    assert customdata_values(custom)[::3] == [7, 8]


@pytest.mark.parametrize("state", [
    None, {}, [], "x", {"selection": None}, {"selection": {}}, {"selection": {"points": []}},
    {"selection": {"points": "abc"}}, {"selection": {"points": [None, 3, "x"]}},
    _with_customdata(None), _with_customdata([]), _with_customdata({}), _with_customdata([float("nan")]),
    _with_customdata([56.5]), _with_customdata({"a": 1}), _with_customdata({"dtype": "f8", "bdata": "!!not b64"}),
    _with_customdata({"dtype": "c16", "bdata": ""}), _with_customdata([True]), _with_customdata(["nid"]),
])
def test_an_empty_or_malformed_selection_selects_nothing(state):
    assert selected_nid(state) is None


def test_points_without_a_nucleus_are_skipped():
    state = copy.deepcopy(CLICK)
    ring = {"curve_number": 3, "point_index": 0, "x": 1.0, "y": 2.0}  # the "selected" ring: no customdata
    state["selection"]["points"].insert(0, ring)
    assert selected_nid(state) == 56


def test_event_signature_tells_events_apart():
    assert event_signature(None) == event_signature({"selection": {}}) == ""
    moved = copy.deepcopy(CLICK)
    moved["selection"]["points"][0]["x"] += 1
    assert event_signature(CLICK) == event_signature(copy.deepcopy(CLICK)) != event_signature(moved)
