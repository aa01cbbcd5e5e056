"""The slide viewer against a synthetic pyramidal slide in the real local Neo4j: the viewport's queries
(bins that count what is stored, bounded payloads), the page in AppTest (buttons, a box drawn on the
chart), and ``render`` of a slide window at a pyramid level."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import streamlit as st
from apptest_helpers import assert_clean, open_page
from PIL import Image

from nucleograph.cli import main
from nucleograph.dashboard.viewport import Viewport, aggregate, grid_cell, in_view
from nucleograph.db import store
from nucleograph.errors import InputError

pytestmark = pytest.mark.neo4j


def _inside(nuclei, x0, y0, x1, y1):
    x, y = nuclei["centroid_x"], nuclei["centroid_y"]
    return (x >= x0) & (x <= x1) & (y >= y0) & (y <= y1)


def test_the_grid_and_its_bins_count_every_stored_nucleus(slide_cohort, graphdb):
    s = slide_cohort
    cell = grid_cell(4096, 3072)
    grid = store.nucleus_grid(graphdb, s["name"], s["image_id"], cell=cell, score_property=s["property"])
    assert grid["counts"].sum() == grid["scored"].sum() == s["n_nuclei"] > 1000
    whole = Viewport.whole(4096, 3072)
    bins = aggregate(grid, whole.bounds, bins_across=32)
    assert bins["counts"].sum() == s["n_nuclei"] and bins["counts"].size <= 32 * 32
    # each bin holds exactly the nuclei whose centroids fall in it, and their mean score
    x, y = s["nuclei"]["centroid_x"], s["nuclei"]["centroid_y"]
    size = bins["bin"]
    iy, ix = np.nonzero(bins["counts"])
    for i, j in list(zip(iy, ix, strict=True))[:: max(1, len(iy) // 25)]:
        bx, by = bins["x"][j] - size / 2, bins["y"][i] - size / 2
        inside = (x >= bx) & (x < bx + size) & (y >= by) & (y < by + size)
        assert bins["counts"][i, j] == inside.sum()
        assert bins["mean"][i, j] == pytest.approx(s["scores"][inside].mean(), abs=1e-9)
    assert in_view(grid, whole.bounds) == s["n_nuclei"]
    assert store.nucleus_grid(graphdb, s["name"], "no-such-image", cell=cell) is None
    with pytest.raises(InputError, match="positive"):
        store.nucleus_grid(graphdb, s["name"], s["image_id"], cell=0)


def test_viewport_nuclei_come_from_the_point_index_and_stay_bounded(slide_cohort, graphdb):
    s = slide_cohort
    box = (1024.0, 768.0, 2048.0, 1536.0)
    got = store.viewport_nuclei(graphdb, s["name"], s["image_id"], *box, score_property=s["property"], limit=10**6)
    want = _inside(s["nuclei"], *box)
    assert sorted(got["nid"]) == sorted(s["nuclei"]["nucleus_id"][want]) and want.sum() > 20
    by_nid = dict(zip(s["nuclei"]["nucleus_id"], s["scores"], strict=True))
    assert np.allclose(got["score"], [by_nid[n] for n in got["nid"]])
    assert (got["area"] > 0).all()
    few = store.viewport_nuclei(graphdb, s["name"], s["image_id"], *box, limit=10)
    assert len(few["nid"]) == 10 and np.isnan(few["score"]).all()  # the limit bounds the payload
    assert in_view(store.nucleus_grid(graphdb, s["name"], s["image_id"], cell=32), box) >= want.sum()
    with pytest.raises(InputError, match="empty"):
        store.viewport_nuclei(graphdb, s["name"], s["image_id"], 10, 10, 0, 0, limit=5)
    with pytest.raises(InputError, match="positive integer"):
        store.viewport_nuclei(graphdb, s["name"], s["image_id"], *box, limit=0)
    assert store.score_scale(graphdb, s["name"], s["image_id"], s["property"]) == pytest.approx(
        np.percentile(np.abs(s["scores"]), 99), rel=1e-3)
    ordered = np.sort(s["scores"])
    every = store.score_quantiles(graphdb, s["name"], s["image_id"], s["property"], steps=ordered.size - 1)
    np.testing.assert_allclose(every, ordered)  # as many steps as scores: every score, in order
    ten = store.score_quantiles(graphdb, s["name"], s["image_id"], s["property"], steps=10)
    np.testing.assert_allclose(ten, ordered[np.floor(np.arange(11) * (ordered.size - 1) / 10 + 0.5).astype(int)])
    assert store.score_quantiles(graphdb, s["name"], s["image_id"], "imp_r0_none") is None
    with pytest.raises(InputError, match="at least 1"):
        store.score_quantiles(graphdb, s["name"], s["image_id"], s["property"], steps=0)


def _chart(at):
    charts = at.main.get("plotly_chart")  # the navigator is in the sidebar
    assert len(charts) == 1
    return json.loads(charts[0].proto.spec)


def test_the_page_bins_the_whole_slide_and_draws_nuclei_zoomed_in(slide_cohort, test_environ):
    s = slide_cohort
    st.cache_data.clear()  # the cohort list cached by an earlier test may predate this cohort
    at = open_page("slides", s["name"], slides_max=500)  # the test slide holds 1,350 nuclei
    assert_clean(at)
    fig = _chart(at)
    names = [t.get("name") for t in fig["data"]]
    assert "bins" in names and "nuclei" not in names
    assert fig["layout"]["images"][0]["source"].startswith("data:image/jpeg;base64,")
    assert len(fig["layout"]["images"][0]["source"]) < 400_000  # the pixels sent are bounded by the screen
    caption = at.caption[0].value
    # 4608 px over 1024 screen px (4.5 slide px a screen px): level 1, downsample 4
    assert "pyramid level 1" in caption and f"{s['n_nuclei']:,} nuclei in" in caption
    assert at.session_state["slides_expl"] is not None  # the run's scores colour the bins

    at.button(key="slides_in").click().run()
    # 2304 px over 1024 screen px: level 1 (576 px of it) magnified 1.8x, within MAX_MAGNIFY; not level 0
    assert "pyramid level 1" in at.caption[0].value
    for _ in range(2):  # 4608 / 8 = 576 px wide (the whole slide at the chart's 3:2): nuclei one by one
        at.button(key="slides_in").click().run()
    assert_clean(at)
    view = at.session_state["slides_view"]
    assert view[3] == pytest.approx(576.0)
    fig = _chart(at)
    nuclei = next(t for t in fig["data"] if t.get("name") == "nuclei")
    assert "one by one" in at.caption[0].value and "pyramid level 0" in at.caption[0].value
    x0, y0, x1, y1 = Viewport(*view[1:], 4096, 3072).bounds
    assert nuclei["customdata"]["shape"] == f"{_inside(s['nuclei'], x0, y0, x1, y1).sum()}, 3"  # a typed array

    at.button(key="slides_right").click().run()
    assert at.session_state["slides_view"][1] == pytest.approx(view[1] + 288)
    at.button(key="slides_whole").click().run()
    assert at.session_state["slides_view"][3] == pytest.approx(4608)


def _typed(value) -> np.ndarray:
    """A plotly typed array (``{"dtype", "bdata"[, "shape"]}``) as numpy."""
    out = np.frombuffer(base64.b64decode(value["bdata"]), np.dtype(value["dtype"]).newbyteorder("<"))
    return out.reshape(-1, 3) if value.get("shape", "").endswith(", 3") else out


def test_the_heat_map_can_be_coloured_by_rank_in_the_slide(slide_cohort, test_environ, graphdb):
    from nucleograph.gnn.render import rank_on_scale

    s = slide_cohort
    st.cache_data.clear()
    at = open_page("slides", s["name"], slides_max=500)
    assert at.session_state["slides_scaling"] == "relative"  # attention scores: as measured
    at.selectbox(key="slides_scaling").set_value("rank").run()
    assert_clean(at)
    assert "coloured by rank among the slide's scores" in at.caption[1].value
    bins = next(t for t in _chart(at)["data"] if t.get("name") == "bins")
    assert bins["colorbar"]["title"]["text"] == "mean score's rank in the slide"
    for _ in range(3):  # nuclei one by one, each coloured by its rank among all the slide's scores
        at.button(key="slides_in").click().run()
    assert at.session_state["slides_scaling"] == "rank"  # kept while the view moves
    nuclei = next(t for t in _chart(at)["data"] if t.get("name") == "nuclei")
    assert nuclei["marker"]["colorbar"]["title"]["text"] == "rank in the slide"
    nids = _typed(nuclei["customdata"])[:, 0].astype(int)
    by_nid = dict(zip(s["nuclei"]["nucleus_id"], s["scores"], strict=True))
    quantiles = store.score_quantiles(graphdb, s["name"], s["image_id"], s["property"])
    want = rank_on_scale(np.array([by_nid[n] for n in nids]), quantiles)
    np.testing.assert_allclose(_typed(nuclei["marker"]["color"]), want, atol=1e-6)
    assert -1.0 <= want.min() < 0.0 < want.max() <= 1.0  # this view holds scores of both signs


def test_a_box_drawn_on_the_chart_zooms_to_it_once(slide_cohort, test_environ):
    s = slide_cohort
    st.cache_data.clear()
    at = open_page("slides", s["name"])
    # what the browser sends for a box dragged in select mode (Streamlit's selection state)
    at.session_state["slides_chart"] = {"selection": {"points": [], "point_indices": [], "lasso": [],
                                        "box": [{"xref": "x", "yref": "y", "x": [1000, 1600], "y": [800, 1200]}]}}
    at.run()
    assert_clean(at)
    _, cx, cy, width = at.session_state["slides_view"]
    assert (cx, cy, width) == pytest.approx((1300, 1000, 600))
    at.button(key="slides_out").click().run()  # the box is not applied again
    assert at.session_state["slides_view"][3] == pytest.approx(1200)
    # malformed selections move nothing
    for sel in ({"points": [{"x": "nonsense"}], "box": [{"x": None}]}, {"points": [{"x": float("nan"), "y": 1.0}]},
                {"points": "x"}, None):
        at.session_state["slides_chart"] = {"selection": sel}
        at.run()
        assert_clean(at)
        assert at.session_state["slides_view"][1:] == pytest.approx((1300, 1000, 1200))


def test_a_click_on_a_bin_zooms_in_there_and_on_a_nucleus_centres_and_reads_it(slide_cohort, test_environ):
    s = slide_cohort
    st.cache_data.clear()
    at = open_page("slides", s["name"], slides_max=500)
    assert_clean(at)
    assert "Nucleus" not in [h.value.split()[0] for h in at.subheader]
    # the browser passes clicks on points on only outside box-select mode: the Click mode leaves it
    assert _chart(at)["layout"]["dragmode"] == "select"
    at.get("button_group")[0].set_value("click").run()
    assert _chart(at)["layout"]["dragmode"] is False and "click a bin" in at.caption[0].value
    # a click on a bin's centre (a point of the invisible "bin centres" trace: no customdata)
    at.session_state["slides_chart"] = {"selection": {"points": [{"x": 1500.0, "y": 1100.0, "curve_number": 1,
                                                                  "point_index": 7}],
                                                      "point_indices": [7], "box": [], "lasso": []}}
    at.run()
    assert_clean(at)
    assert at.session_state["slides_view"][1:] == pytest.approx((1500, 1100, 4608 / 2))
    # a click on a nucleus: customdata as the browser serialises a typed array (an object keyed by index)
    cx, cy = s["nuclei"]["centroid_x"], s["nuclei"]["centroid_y"]
    near = np.hypot(cx[:, None] - cx[None], cy[:, None] - cy[None]) < 60.0  # the fixture's edge threshold
    degrees = near.sum(1) - 1
    # the best-linked nucleus where centring the view on it needs no clamping at the slide's edges (the
    # 2304 x 1536 px view of this 4096 x 3072 slide: centres x 1152-2944, y 768-2304)
    i = int(np.argmax(np.where((np.abs(cx - 1800) < 600) & (np.abs(cy - 1300) < 500), degrees, -1)))
    nid = int(s["nuclei"]["nucleus_id"][i])
    x, y = float(s["nuclei"]["centroid_x"][i]), float(s["nuclei"]["centroid_y"][i])
    at.session_state["slides_chart"] = {"selection": {"points": [{"x": x, "y": y, "curve_number": 2, "point_index": 3,
                                                                  "customdata": {"0": nid, "1": 0.1, "2": 80.0}}],
                                                      "point_indices": [3], "box": [], "lasso": []}}
    at.run()
    assert_clean(at)
    assert at.session_state["slides_view"][1:] == pytest.approx((x, y, 4608 / 2))  # centred, same zoom
    assert f"Nucleus {nid}" in [h.value for h in at.subheader]
    degree = next(m for m in at.metric if m.label == "degree")
    assert int(degree.value) == degrees[i] > 0  # read from Neo4j: the nucleus's NEAR edges
    fig = _chart(at)
    ring = next(t for t in fig["data"] if t.get("name") == "selected")
    assert (ring["x"][0], ring["y"][0]) == pytest.approx((x, y))


def test_a_click_on_the_navigator_moves_the_view_there(slide_cohort, test_environ):
    s = slide_cohort
    st.cache_data.clear()
    at = open_page("slides", s["name"])
    at.button(key="slides_in").click().run()
    at.button(key="slides_in").click().run()
    width = at.session_state["slides_view"][3]
    nav = json.loads(at.sidebar.get("plotly_chart")[0].proto.spec)
    assert nav["layout"]["images"][0]["source"].startswith("data:image/jpeg;base64,")
    assert len(nav["layout"]["images"][0]["source"]) < 60_000  # a thumbnail, whatever the slide's size
    rect = nav["layout"]["shapes"][0]
    x0, y0, x1, y1 = Viewport(*at.session_state["slides_view"][1:], 4096, 3072).bounds
    assert (rect["x0"], rect["y0"], rect["x1"], rect["y1"]) == pytest.approx((x0, y0, x1, y1))
    at.session_state["slides_nav"] = {"selection": {"points": [{"x": 3500.0, "y": 600.0, "curve_number": 0}],
                                                    "point_indices": [0], "box": [], "lasso": []}}
    at.run()
    assert_clean(at)
    view = Viewport(3500.0, 600.0, width, 4096, 3072).clamped()  # kept over the slide
    assert at.session_state["slides_view"][1:] == pytest.approx((view.cx, view.cy, width))


def test_the_page_says_when_a_cohort_has_no_slides(dash_cohort, test_environ):
    st.cache_data.clear()  # the cohort list cached by an earlier test may predate this cohort
    at = open_page("slides", dash_cohort["name"])
    assert_clean(at)
    assert any("no slides" in i.value for i in at.info)


def test_render_draws_a_slide_window_at_a_level(slide_cohort, test_environ, tmp_path, capsys):
    s = slide_cohort
    base = ["render", "--image", s["image_id"], "--run", s["run_id"], "--method", "attention"]
    out = tmp_path / "whole.png"
    assert main([*base, "--level", "1", "--out", str(out)]) == 0  # the whole slide at level 1 (1024 x 768)
    assert "1024x768 px of the image at downsample 4" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.size[0] > 500
    out = tmp_path / "window.png"
    assert main([*base, "--level", "0", "--window", "1024,768,2048,1536", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    want = _inside(s["nuclei"], 1024, 768, 2048, 1536).sum()
    assert "1024x768 px of the image at downsample 1" in printed and f"{want:,} nuclei" in printed
    assert main([*base, "--level", "7", "--out", str(tmp_path / "x.png")]) == 1
    assert "no pyramid level 7" in capsys.readouterr().err
    assert main([*base, "--window", "1,2,3", "--out", str(tmp_path / "x.png")]) == 1
    assert "X0,Y0,X1,Y1" in capsys.readouterr().err
