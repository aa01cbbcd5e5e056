"""Slide viewer: pan and zoom over a slide's pyramid, with its nuclei (binned when zoomed out, one by
one when zoomed in) coloured by density or by a run's importance scores.

Every view is drawn by the server: the pixels from the pyramid level that suits the zoom (tiles cached),
the bins from the slide's nucleus grid (read once per slide and score), the nuclei from the point
index. The browser never zooms the chart itself: in Box mode drag a box to zoom to it; in Click mode click
a bin to zoom in about it or a nucleus to centre it and read it (Streamlit passes clicks on points on
only outside box-select mode); click the navigator (the whole slide, in the sidebar) to go there, or use
the buttons. The view is kept in the address (``?image=...&x=...&y=...&w=...``) so it can be shared.
"""

import math
import time
from collections.abc import Mapping

import streamlit as st

from nucleograph.dashboard import data, plots, selection, stats
from nucleograph.dashboard.viewport import (
    MAX_MAGNIFY,
    SCREEN_PX,
    TILE,
    Viewport,
    aggregate,
    grid_cell,
    in_view,
)
from nucleograph.gnn.render import default_scaling
from nucleograph.ingest.readers import slide_level_for

NUCLEI_MAX = 4000  # nuclei drawn one by one up to this many in view (by default); above, bins
SLIDE_MIN_SIDE = 2 * data.DISPLAY_MAX_SIDE  # smaller images are shown whole by the Image explorer
NAVIGATOR_PX = 300  # the navigator's thumbnail width
SLIDE_SCALINGS = {"relative": "relative (÷ 99th percentile of |score|)", "rank": "rank in the slide"}

reader = data.connect()
st.title("Slide viewer")

cohort = st.session_state.get("cohort")
if cohort is None:
    st.info("No cohorts yet: ingest slides with `nucleograph ingest PATH --cohort NAME`.")
    st.stop()
images = data.cohort_images(reader, cohort=cohort)
large = images[images[["width", "height"]].max(axis=1).fillna(0) > SLIDE_MIN_SIDE] if not images.empty else images
if large.empty:
    st.info(f"Cohort {cohort} has no slides (no image is over {SLIDE_MIN_SIDE} px on a side): the Image explorer "
            "shows its images whole. Make a synthetic slide with `nucleograph synth ... --slide`.")
    st.stop()
by_id = large.set_index("id")
ids = large["id"].tolist()
expls = data.explanations(reader, cohort=cohort)
keys = [None] + [e["key"] for e in expls]
expl_by_key = {e["key"]: e for e in expls}

c1, c2, c3, c4 = st.columns([3, 4, 1.5, 1.5])
if st.session_state.get("slides_image") not in ids:
    wanted = st.query_params.get("image")
    st.session_state["slides_image"] = wanted if wanted in ids else ids[0]
image_id = c1.selectbox("Slide", ids, key="slides_image", format_func=lambda i: (
    f"{by_id.at[i, 'label']} · {i} · {int(by_id.at[i, 'width'])}×{int(by_id.at[i, 'height'])} px · "
    f"{int(by_id.at[i, 'n_nuclei'] or 0):,} nuclei"))
if "slides_expl" not in st.session_state or st.session_state["slides_expl"] not in keys:
    st.session_state["slides_expl"] = keys[1] if len(keys) > 1 else None
key = c2.selectbox("Heat map (run · model · method)", keys, key="slides_expl", help=stats.methods_help(),
                   placeholder="none (nucleus density)",  # what Streamlit shows when the value is None
                   format_func=lambda k: "none (nucleus density)" if k is None else stats.explanation_label(expl_by_key[k]))
scale_name = c3.selectbox("Colour scale", plots.COLOUR_SCALES, key="slides_scale")
if st.session_state.get("slides_scaling_for") != key:  # a new heat map starts at its method's scaling
    st.session_state["slides_scaling"] = default_scaling(expl_by_key[key]["method"]) if key else "relative"
    st.session_state["slides_scaling_for"] = key
scaling = c4.selectbox("Score scaling", list(SLIDE_SCALINGS), key="slides_scaling", format_func=SLIDE_SCALINGS.get,
                       help="relative: scores over the slide's 99th percentile of |score|; rank: each nucleus's "
                            "rank among the slide's scores (local evidence and contribution start here: their order is what they show)")
nuclei_max = st.sidebar.number_input("Slide viewer: nuclei one by one up to", 100, 20_000, NUCLEI_MAX, step=500,
                                     key="slides_max", help="views holding more nuclei show them binned")
prop = expl_by_key[key]["property"] if key else None

meta = by_id.loc[image_id]
dims, downs = data.slide_levels(meta["path"])
readable = dims is not None
if dims is None:
    st.warning(f"The slide's pixels cannot be read ({downs}); its nuclei are drawn on white.")
    dims, downs = [(int(meta["width"]), int(meta["height"]))], [1.0]
width, height = int(meta["width"]), int(meta["height"])


# --- the view: kept per slide in the session and mirrored in the address ---------------------------
def _view() -> Viewport:
    saved = st.session_state.get("slides_view")
    if saved and saved[0] == image_id:
        return Viewport(*saved[1:], width, height)
    return Viewport.from_query(st.query_params, width, height) if st.query_params.get("image") == image_id \
        else Viewport.whole(width, height)


def _keep(view: Viewport) -> None:
    st.session_state["slides_view"] = (image_id, view.cx, view.cy, view.width)


def _move(how: str, *args: float) -> None:
    view = _view()
    _keep({"zoom": view.zoomed, "pan": view.panned}[how](*args) if how != "whole" else Viewport.whole(width, height))


def _clicked(sel: Mapping) -> tuple[float, float] | None:
    """Where the first selected point lies, or None (no point, or not a finite position)."""
    points = sel.get("points") or []
    try:
        x, y = float(points[0]["x"]), float(points[0]["y"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return (x, y) if math.isfinite(x) and math.isfinite(y) else None


def _apply(state) -> None:
    """A box dragged on the chart zooms to it; a click on a bin zooms in twice about it; a click on a
    nucleus centres the view on it and selects it. A malformed selection moves nothing."""
    sel = state.get("selection") if isinstance(state, Mapping) else None
    if not isinstance(sel, Mapping):
        return
    boxes = sel.get("box") or []
    try:
        if boxes:
            xs, ys = boxes[-1]["x"], boxes[-1]["y"]
            if abs(xs[1] - xs[0]) > 1 and abs(ys[1] - ys[0]) > 1:
                _keep(_view().framing(float(xs[0]), float(ys[0]), float(xs[1]), float(ys[1])))
            return
    except (KeyError, IndexError, TypeError, ValueError):
        return
    at = _clicked(sel)
    if at is None:
        return
    nid = selection.selected_nid(state)
    if nid is None:  # a bin's centre
        _keep(_view().zoomed(2.0).centred(*at))
    else:
        st.session_state["slides_nucleus"] = (image_id, nid, *at)
        _keep(_view().centred(*at))


def _navigate(state) -> None:
    """A click on the navigator centres the view there, at the same zoom."""
    sel = state.get("selection") if isinstance(state, Mapping) else None
    at = _clicked(sel) if isinstance(sel, Mapping) else None
    if at is not None:
        _keep(_view().centred(*at))


# Each selection event is applied once (a chart keeps its last selection across reruns, so a button
# pressed after a box must not zoom to the box again).
for chart_key, apply in (("slides_chart", _apply), ("slides_nav", _navigate)):
    chart_state = st.session_state.get(chart_key)
    event = selection.event_signature(chart_state)
    if chart_state is not None and st.session_state.get(f"{chart_key}_event") != event:
        st.session_state[f"{chart_key}_event"] = event
        apply(chart_state)


b = st.columns([1, 1, 1, 1, 1, 1, 1.2, 1.5])  # the last holds the two-option mouse control
b[0].button("Zoom in", key="slides_in", on_click=_move, args=("zoom", 2.0), icon=":material/zoom_in:")
b[1].button("Zoom out", key="slides_out", on_click=_move, args=("zoom", 0.5), icon=":material/zoom_out:")
b[2].button("Left", key="slides_left", on_click=_move, args=("pan", -0.5, 0.0), icon=":material/arrow_back:")
b[3].button("Right", key="slides_right", on_click=_move, args=("pan", 0.5, 0.0), icon=":material/arrow_forward:")
b[4].button("Up", key="slides_up", on_click=_move, args=("pan", 0.0, -0.5), icon=":material/arrow_upward:")
b[5].button("Down", key="slides_down", on_click=_move, args=("pan", 0.0, 0.5), icon=":material/arrow_downward:")
b[6].button("Whole slide", key="slides_whole", on_click=_move, args=("whole",), icon=":material/fit_screen:")
MOUSE = {"box": ":material/crop_free: Box", "click": ":material/ads_click: Click"}
mouse = b[7].segmented_control("Mouse", list(MOUSE), format_func=MOUSE.get, key="slides_mouse", default="box",
                               label_visibility="collapsed",
                               help="Box: drag a box on the slide to zoom to it. Click: click a bin to zoom in "
                                    "there, a nucleus to centre the view on it and read it.") or "box"

view = _view()
_keep(view)
st.query_params.update({"image": image_id, **view.to_query()})
bounds = view.bounds

# --- what to draw -----------------------------------------------------------------------------------
started = time.perf_counter()
# the coarsest level at most MAX_MAGNIFY times magnified: a view 4.5 slide px a screen px wide reads level 1
# (downsample 4), not 16 times the pixels of level 0
level = slide_level_for(downs, MAX_MAGNIFY * view.width / SCREEN_PX)
source = None
if readable:
    source = data.viewport_image(meta["path"], bounds, level, SCREEN_PX, TILE)
cell = grid_cell(width, height)
grid = data.nucleus_grid(reader, cohort=cohort, image_id=image_id, prop=prop, cell=cell)
if grid is None:
    st.warning(f"Slide {image_id} is gone from cohort {cohort}; refresh the data.")
    st.stop()
scale = data.score_scale(reader, cohort=cohort, image_id=image_id, prop=prop) if prop else None
colour = "score" if scale else "density"
quantiles = (data.score_quantiles(reader, cohort=cohort, image_id=image_id, prop=prop)
             if scale and scaling == "rank" else None)
if prop and scale is None:
    st.info("This slide has no scores under the chosen explanation (it was not explained): nucleus density shown.")
estimate = in_view(grid, bounds)
bins = nuclei = None
if estimate <= nuclei_max:
    nuclei = data.viewport_nuclei(reader, cohort=cohort, image_id=image_id, prop=prop, bounds=bounds,
                                  limit=int(nuclei_max))
else:
    bins = aggregate(grid, bounds)

picked = st.session_state.get("slides_nucleus")
picked = picked if picked and picked[0] == image_id else None
fig = plots.slide_view(bounds, source=source, bins=bins, nuclei=nuclei, colour=colour, scale=scale,
                       colour_scale=scale_name, selected=picked[2:] if picked else None, box=mouse == "box",
                       quantiles=quantiles)
st.plotly_chart(fig, key="slides_chart", on_select="rerun", selection_mode=("points", "box"),
                config={"displayModeBar": False, "scrollZoom": False, "doubleClick": False})
x0, y0, x1, y1 = bounds
shown = (f"{len(nuclei):,} nuclei one by one" if nuclei is not None else
         f"{int(bins['counts'].sum()):,} nuclei in {bins['counts'].size:,} bins of {bins['bin']:.0f} px")
st.caption(f"view x {x0:,.0f}–{x1:,.0f}, y {y0:,.0f}–{y1:,.0f} px · zoom {view.zoom:.3g}× · pyramid level {level} "
           f"(downsample {downs[level]:g}) · {shown} · read and drawn in {(time.perf_counter() - started) * 1000:.0f} ms "
           + ("· drag a box to zoom to it (choose Click to click bins and nuclei)" if mouse == "box" else
              "· click a bin to zoom in there, a nucleus to centre and read it (choose Box to drag a box)")
           + " · the navigator in the sidebar moves the view")
st.caption(f"slide {width:,}×{height:,} px · {int(grid['counts'].sum()):,} nuclei · "
           + (f"heat map: {stats.explanation_label(expl_by_key[key])}, mean score per bin when zoomed out, "
              + ("coloured by rank among the slide's scores" if quantiles is not None else
                 f"scaled by the slide's 99th percentile of |score| ({scale:.3g})") if scale else
              "colour: nuclei per bin" if bins is not None else "nuclei in one colour (no scores)"))

# --- the navigator: the whole slide in the sidebar, the view outlined; a click goes there ------------
with st.sidebar:
    st.caption("Navigator: the whole slide, the view outlined; click to go there")
    thumb = None
    if readable:
        whole = (0.0, 0.0, float(width), float(height))
        thumb = data.viewport_image(meta["path"], whole, slide_level_for(downs, width / NAVIGATOR_PX), NAVIGATOR_PX,
                                    TILE)
    st.plotly_chart(plots.slide_navigator((width, height), bounds, source=thumb,
                                          height=max(80, min(320, round(NAVIGATOR_PX * height / width)))),
                    key="slides_nav", on_select="rerun", selection_mode=("points",),
                    config={"displayModeBar": False, "scrollZoom": False, "doubleClick": False})

# --- the selected nucleus: what the Image explorer shows for one ---------------------------------
if picked:
    nid = picked[1]
    uid = f"{meta['segmentation']}:{nid}"
    info = data.nucleus(reader, uid=uid, prop=prop)
    if info is None:
        st.session_state.pop("slides_nucleus", None)
    else:
        st.subheader(f"Nucleus {nid}")
        a, b, c, _ = st.columns([1, 1, 2, 3])
        a.metric("score", "–" if info["score"] is None else f"{info['score']:.4g}")
        b.metric("degree", info["degree"])
        c.metric("centroid x, y (px)", f"{picked[2]:.0f}, {picked[3]:.0f}")
        left, right = st.columns(2)
        left.dataframe(stats.feature_table(info["props"]), hide_index=True, height=260)
        neigh = data.neighbours(reader, uid=uid, prop=prop)
        right.caption(f"{len(neigh)} neighbours (nearest first)")
        right.dataframe(neigh, hide_index=True, height=230, column_config=data.NEIGHBOUR_COLUMNS)
