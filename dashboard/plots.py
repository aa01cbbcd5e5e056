"""Plotly figures for the dashboard pages (pure functions: data in, figure out)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from nucleograph.dashboard.stats import colour_values
from nucleograph.gnn.render import rank_on_scale, render_importance

# RdBu_r first: diverging and centred on 0, like `nucleograph render`'s coolwarm (occlusion scores
# can be negative: removing such a nucleus raised the predicted probability)
COLOUR_SCALES = ("RdBu_r", "Viridis", "Inferno", "Turbo", "Cividis")
CLASS_COLOURS = ("#636EFA", "#EF553B", "#00CC96", "#AB63FA", "#FFA15A", "#19D3F3")


def overlay(
    meta: dict, nuclei: pd.DataFrame, *, source: str | None, src=None, dst=None, colour: str | None = "score",
    colour_title: str = "importance", colour_scale: str = "RdBu_r", scaling: str = "relative",
    highlight: list[int] | None = None, selected: int | None = None, height: int = 720,
) -> go.Figure:
    """The image with its nuclei as points (coloured by ``colour`` when it has values) and NEAR edges.

    Scores (``colour="score"``) are mapped by :func:`nucleograph.dashboard.stats.colour_values`
    (``scaling``: ``"relative"`` is ``nucleograph render``'s scale); the hover shows the raw score.
    Other columns (area) colour linearly. Nuclei are drawn as points at their centroids: the graph
    stores no outlines (ingest keeps centroid, area and shape measures), so there are no contours
    to draw when zoomed in.

    SVG traces, not WebGL: a few thousand nuclei draw fast either way, and Streamlit dropped a WebGL
    line trace over a layout image in headless Chromium. Coordinates stay in full-resolution pixels; the (possibly downsampled) image, a data URI, is stretched to the
    image's width and height underneath. Each point carries its nid as ``customdata`` for selection.
    """
    width, height_px = float(meta.get("width") or 1), float(meta.get("height") or 1)
    fig = go.Figure()
    if source is not None:
        fig.add_layout_image(
            source=source, xref="x", yref="y", x=0, y=0, sizex=width, sizey=height_px,
            sizing="stretch", layer="below", opacity=1.0,
        )
    if src is not None and len(src):
        ok = ~(pd.isna(src) | pd.isna(dst))
        s, d = np.asarray(src[ok], dtype=np.int64), np.asarray(dst[ok], dtype=np.int64)
        xs, ys = nuclei["x"].to_numpy(), nuclei["y"].to_numpy()
        # one trace for all edges, segments separated by gaps (None: JSON null survives every encoder)
        ex = np.column_stack([xs[s], xs[d], np.full(len(s), np.nan)]).ravel().astype(object)
        ey = np.column_stack([ys[s], ys[d], np.full(len(s), np.nan)]).ravel().astype(object)
        ex[2::3] = None
        ey[2::3] = None
        fig.add_trace(go.Scatter(x=ex.tolist(), y=ey.tolist(), mode="lines", hoverinfo="skip", name="NEAR edges",
                                   line=dict(color="rgba(25,25,60,0.45)", width=1)))
    values = nuclei[colour] if colour and colour in nuclei and nuclei[colour].notna().any() else None
    marker = dict(size=7, line=dict(color="black", width=0.5))
    if values is not None:
        shown, limits = colour_values(values, scaling) if colour == "score" else (values, {})
        marker.update(color=shown, colorscale=colour_scale, showscale=True, **limits,
                      colorbar=dict(title=dict(text=colour_title, side="right"), thickness=14))
        hover = "nucleus %{customdata[0]}<br>score %{customdata[1]:.4g}<br>area %{customdata[2]:.0f}<extra></extra>"
        custom = np.column_stack([nuclei["nid"], values, nuclei["area"]])
    else:
        marker.update(color="#39ff14")
        hover = "nucleus %{customdata[0]}<br>area %{customdata[1]:.0f}<extra></extra>"
        custom = np.column_stack([nuclei["nid"], nuclei["area"]])
    fig.add_trace(go.Scatter(x=nuclei["x"], y=nuclei["y"], mode="markers", marker=marker, customdata=custom,
                               hovertemplate=hover, name="nuclei"))
    if highlight:
        sub = nuclei[nuclei["nid"].isin(highlight)]
        fig.add_trace(go.Scatter(x=sub["x"], y=sub["y"], mode="markers", hoverinfo="skip", name="neighbours",
                                 marker=dict(size=13, color="rgba(0,0,0,0)", line=dict(color="cyan", width=2))))
    if selected is not None:
        sub = nuclei[nuclei["nid"] == selected]
        fig.add_trace(go.Scatter(x=sub["x"], y=sub["y"], mode="markers", hoverinfo="skip", name="selected",
                                 marker=dict(size=18, color="rgba(0,0,0,0)", line=dict(color="magenta", width=3))))
    _image_axes(fig, width, height_px, height)
    return fig


def heatmap_png(image: np.ndarray, nuclei: pd.DataFrame, *, src=None, dst=None, title: str = "") -> bytes:
    """The image's importance heat map as PNG bytes, drawn by ``nucleograph render``'s own function.

    Parameters
    ----------
    image : (H, W, 3) uint8
        The full-resolution image.
    nuclei : DataFrame
        ``x, y, area, score`` per nucleus (as :func:`nucleograph.dashboard.data.image_graph` returns).
    src, dst : array of int, optional
        Edge endpoints as row indices into ``nuclei`` (drawn when given).
    title : str
        The figure's title.

    Returns
    -------
    bytes
        The PNG file.
    """
    centroids = nuclei[["x", "y"]].to_numpy(dtype=float)
    radii = np.sqrt(np.maximum(nuclei["area"].to_numpy(dtype=float), 1.0) / np.pi)
    edges = None
    if src is not None and dst is not None and len(src):
        ok = ~(pd.isna(src) | pd.isna(dst))
        edges = (np.asarray(src[ok], dtype=np.int64), np.asarray(dst[ok], dtype=np.int64))
    with tempfile.TemporaryDirectory(prefix="nucleograph-heatmap-") as tmp:
        out = render_importance(image, centroids, radii, nuclei["score"].to_numpy(dtype=float),
                                Path(tmp) / "heatmap.png", edges=edges, title=title)
        return out.read_bytes()


def points_over_image(meta: dict, points: pd.DataFrame, *, source: str | None, label: str = "result",
                      height: int = 600) -> go.Figure:
    """Console results drawn over their image: the result nuclei as rings."""
    width, height_px = float(meta.get("width") or 1), float(meta.get("height") or 1)
    fig = go.Figure()
    if source is not None:
        fig.add_layout_image(source=source, xref="x", yref="y", x=0, y=0, sizex=width,
                             sizey=height_px, sizing="stretch", layer="below")
    fig.add_trace(go.Scatter(
        x=points["x"], y=points["y"], mode="markers", name=label, customdata=points[["nid"]],
        hovertemplate="nucleus %{customdata[0]}<extra></extra>",
        marker=dict(size=11, color="rgba(255,0,255,0.35)", line=dict(color="magenta", width=2)),
    ))
    _image_axes(fig, width, height_px, height)
    return fig


def _image_axes(fig: go.Figure, width: float, height_px: float, height: int) -> None:
    fig.update_xaxes(range=[0, width], showgrid=False, zeroline=False, visible=False, constrain="domain")
    fig.update_yaxes(range=[height_px, 0], showgrid=False, zeroline=False, visible=False, scaleanchor="x",
                     scaleratio=1, constrain="domain")
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=10, b=0), showlegend=False, dragmode="pan",
                      plot_bgcolor="#222")


def slide_view(
    bounds: tuple[float, float, float, float], *, source: str | None, bins: dict | None = None,
    nuclei: pd.DataFrame | None = None, colour: str = "density", scale: float | None = None,
    colour_scale: str = "RdBu_r", screen_width: int = 1100, height: int = 720,
    selected: tuple[float, float] | None = None, box: bool = True, quantiles: np.ndarray | None = None,
) -> go.Figure:
    """One viewport of a slide: its pixels, and its nuclei as bins (zoomed out) or points (zoomed in).

    The axes span the viewport in level-0 pixels and are fixed (``fixedrange``): the browser never
    zooms the figure itself; a drag draws a box (the page zooms to it), so every view is drawn by the
    server from the pyramid and the point index.

    Parameters
    ----------
    bounds : (x0, y0, x1, y1)
        The viewport.
    source : str or None
        The viewport's pixels as a data URI (:func:`nucleograph.dashboard.data.viewport_image`).
    bins : dict, optional
        :func:`nucleograph.dashboard.viewport.aggregate`'s bins, drawn as a translucent heat map of
        nuclei per bin (``colour="density"``) or of their mean score (``colour="score"``).
    nuclei : DataFrame, optional
        ``nid, x, y, area, score`` per nucleus, drawn as discs of the nucleus's size, coloured by score
        (``colour="score"``) or a single colour.
    colour : {"density", "score"}
    scale : float, optional
        The score that maps to the end of the colour scale (the slide's 99th percentile of |score|).
    quantiles : np.ndarray, optional
        The slide's evenly spaced score quantiles (:func:`nucleograph.db.store.score_quantiles`): colour by
        rank in the slide (:func:`nucleograph.gnn.render.rank_on_scale`) instead of by ``scale``.
    screen_width : int
        About how many screen pixels the plot spans (sizes the discs).
    selected : (float, float), optional
        A selected nucleus's centroid, ringed.
    box : bool
        A drag draws a box (True), or a click selects the bin centre or nucleus under it (False).
        Streamlit passes on a click on a point only when the chart is not in box-select mode, so the
        two cannot share one mode.
    """
    x0, y0, x1, y1 = bounds
    fig = go.Figure()
    if source is not None:
        fig.add_layout_image(source=source, xref="x", yref="y", x=x0, y=y0, sizex=x1 - x0, sizey=y1 - y0,
                             sizing="stretch", layer="below")
    limits = dict(zmin=-1.0, zmax=1.0, zmid=0.0) if colour == "score" else {}

    def coloured(values) -> np.ndarray:  # scores onto the colour scale's -1 .. +1
        if quantiles is not None:
            return rank_on_scale(values, quantiles)
        return np.clip(np.asarray(values, dtype=float) / (scale or 1.0), -1.0, 1.0)

    label = "rank in the slide" if quantiles is not None else "relative score"
    if bins is not None and len(bins["x"]) and len(bins["y"]):
        counts = bins["counts"].astype(float)
        if colour == "score":
            z = coloured(bins["mean"])
            name = "mean score's rank in the slide" if quantiles is not None else "mean relative score"
            title, cs, hover_z = name, colour_scale, name + " %{z:.2f}"
        else:
            z = np.where(counts > 0, counts, np.nan)
            title, cs, hover_z = f"nuclei per {bins['bin']:.0f} px bin", "Viridis", "%{z:.0f} nuclei"
        fig.add_trace(go.Heatmap(
            x=bins["x"], y=bins["y"], z=z, colorscale=cs, opacity=0.5, zsmooth=False, hoverinfo="skip",
            colorbar=dict(title=dict(text=title, side="right"), thickness=14), name="bins", **limits))
        # invisible centres of the bins that hold nuclei: what a click or a box selects (a heat map is not
        # selectable); they carry the bin's hover label, its value read from the marker colour. float32:
        # among the payload's largest arrays, and exact to a pixel at any slide size
        gx, gy = np.meshgrid(bins["x"], bins["y"])
        full = counts.ravel() > 0
        fig.add_trace(go.Scatter(
            x=gx.ravel()[full].astype(np.float32), y=gy.ravel()[full].astype(np.float32), mode="markers",
            name="bin centres", marker=dict(size=6, opacity=0, color=np.asarray(z, np.float32).ravel()[full]),
            hovertemplate=hover_z.replace("%{z", "%{marker.color") + "<br>x %{x:.0f}, y %{y:.0f}<extra></extra>"))
    if nuclei is not None and len(nuclei):
        px = screen_width / max(x1 - x0, 1.0)  # screen pixels per slide pixel
        size = np.clip(2 * np.sqrt(np.maximum(nuclei["area"].fillna(30.0).to_numpy(), 1.0) / np.pi) * px, 4, 40)
        scored = colour == "score" and nuclei["score"].notna().any()
        # float32 where a value only places or paints (to 0.01 px on a 100,000 px slide): half the bytes of the
        # arrays the browser decodes; customdata keeps the nucleus id exact. At 0.6 opacity the nucleus shows through
        marker = dict(size=size.astype(np.float32), line=dict(color="black", width=0.5), opacity=0.6)
        if scored:
            marker.update(color=coloured(nuclei["score"].to_numpy(float)).astype(np.float32),
                          colorscale=colour_scale,
                          cmin=-1.0, cmax=1.0, cmid=0.0, showscale=True,
                          colorbar=dict(title=dict(text=label, side="right"), thickness=14))
        else:
            marker.update(color="rgba(57,255,20,0.7)")
        custom = np.column_stack([nuclei["nid"], nuclei["score"], nuclei["area"]])
        fig.add_trace(go.Scatter(
            x=nuclei["x"].to_numpy(np.float32), y=nuclei["y"].to_numpy(np.float32), mode="markers", marker=marker,
            customdata=custom, name="nuclei",
            hovertemplate="nucleus %{customdata[0]}<br>score %{customdata[1]:.4g}<br>area %{customdata[2]:.0f}"
                          "<extra></extra>"))
    if selected is not None:
        fig.add_trace(go.Scatter(x=[selected[0]], y=[selected[1]], mode="markers", name="selected", hoverinfo="skip",
                                 marker=dict(size=26, symbol="circle-open", color="#ffd400", line=dict(width=3))))
    _fixed_axes(fig, bounds)
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=10, b=0), showlegend=False,
                      dragmode="select" if box else False, plot_bgcolor="#fff", hovermode="closest")
    return fig


def _fixed_axes(fig: go.Figure, bounds: tuple[float, float, float, float]) -> None:
    """Hidden axes spanning ``bounds`` in level-0 pixels, ``y`` down, one unit the same on both, not
    zoomable in the browser."""
    x0, y0, x1, y1 = bounds
    fig.update_xaxes(range=[x0, x1], showgrid=False, zeroline=False, visible=False, fixedrange=True,
                     constrain="domain")
    fig.update_yaxes(range=[y1, y0], showgrid=False, zeroline=False, visible=False, fixedrange=True,
                     scaleanchor="x", scaleratio=1, constrain="domain")


def slide_navigator(slide_size: tuple[int, int], view: tuple[float, float, float, float], *, source: str | None,
                    across: int = 32, height: int = 200) -> go.Figure:
    """The whole slide, small, with the current view outlined: a click on it moves the view there.

    Parameters
    ----------
    slide_size : (int, int)
        The slide's level-0 width and height.
    view : (x0, y0, x1, y1)
        The slide viewer's current view, outlined.
    source : str or None
        The whole slide's pixels as a data URI (a thumbnail).
    across : int
        Invisible points placed ``across`` to the slide's width (and as densely down): what a click
        selects, its position the point's; their number is bounded whatever the slide.
    """
    width, height_px = slide_size
    fig = go.Figure()
    if source is not None:
        fig.add_layout_image(source=source, xref="x", yref="y", x=0, y=0, sizex=width, sizey=height_px,
                             sizing="stretch", layer="below")
    step = width / across
    gx, gy = np.meshgrid(np.arange(step / 2, width, step), np.arange(step / 2, height_px, step))
    fig.add_trace(go.Scatter(x=gx.ravel().astype(np.float32), y=gy.ravel().astype(np.float32), mode="markers",
                             name="places",
                             marker=dict(size=8, opacity=0),
                             hovertemplate="go to x %{x:.0f}, y %{y:.0f}<extra></extra>"))
    x0, y0, x1, y1 = view
    fig.add_shape(type="rect", x0=max(x0, 0), y0=max(y0, 0), x1=min(x1, width), y1=min(y1, height_px),
                  line=dict(color="#e8002d", width=2), fillcolor="rgba(232,0,45,0.12)")
    _fixed_axes(fig, (0.0, 0.0, float(width), float(height_px)))
    fig.update_layout(height=height, margin=dict(l=0, r=0, t=0, b=0), showlegend=False, plot_bgcolor="#fff",
                      hovermode="closest", dragmode=False)
    return fig


def confusion(cm: np.ndarray, names: list[str], *, title: str = "") -> go.Figure:
    """A confusion-matrix heatmap: rows true class, columns predicted, counts and row shares as text."""
    row = cm.sum(1, keepdims=True)
    share = np.divide(cm, row, out=np.zeros(cm.shape, dtype=float), where=row > 0)
    text = [[f"{cm[i, j]}<br>({share[i, j]:.0%})" for j in range(cm.shape[1])] for i in range(cm.shape[0])]
    fig = go.Figure(go.Heatmap(z=share, x=names, y=names, text=text, texttemplate="%{text}", colorscale="Blues",
                               zmin=0, zmax=1, showscale=False, hovertemplate="true %{y}<br>pred %{x}<extra></extra>"))
    fig.update_layout(title=title, height=360, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis_title="predicted", yaxis_title="true")
    fig.update_yaxes(autorange="reversed")
    return fig


def curves(history: list[dict], *, title: str = "") -> go.Figure:
    """Training curves: losses on the left axis, validation accuracy on the right."""
    h = pd.DataFrame(history)
    fig = go.Figure()
    for col, name in (("train_loss", "train loss"), ("val_loss", "validation loss")):
        if col in h:
            fig.add_trace(go.Scatter(x=h["epoch"], y=h[col], mode="lines+markers", name=name))
    if "val_accuracy" in h:
        fig.add_trace(go.Scatter(x=h["epoch"], y=h["val_accuracy"], mode="lines+markers", name="validation accuracy",
                                 yaxis="y2", line=dict(dash="dot")))
    fig.update_layout(title=title, height=360, margin=dict(l=10, r=10, t=40, b=10), xaxis_title="epoch",
                      yaxis=dict(title="loss"),
                      yaxis2=dict(title="accuracy", overlaying="y", side="right", range=[0, 1.02]),
                      legend=dict(orientation="h", y=-0.25))
    return fig


def boxes(stats: pd.DataFrame, *, x: str, group: str, title: str = "", y_title: str = "") -> go.Figure:
    """Box plots from precomputed five-number summaries (see :func:`nucleograph.dashboard.stats.box_stats`)."""
    fig = go.Figure()
    for i, (name, sub) in enumerate(stats.groupby(group, sort=True)):
        fig.add_trace(go.Box(
            x=sub[x], q1=sub["q1"], median=sub["median"], q3=sub["q3"], lowerfence=sub["lowerfence"],
            upperfence=sub["upperfence"], name=str(name), marker_color=CLASS_COLOURS[i % len(CLASS_COLOURS)],
            boxpoints=False,
        ))
    fig.update_layout(boxmode="group", title=title, height=300, margin=dict(l=10, r=10, t=40, b=10),
                      yaxis_title=y_title, legend=dict(orientation="h", y=-0.2))
    return fig


def effect_heatmap(effects: pd.DataFrame, labels: dict[str, str], *, title: str = "") -> go.Figure:
    """Standardised difference of the top-k nuclei from all nuclei: features x classes."""
    table = effects.pivot(index="feature", columns="label", values="d")
    table = table.reindex([f for f in labels if f in table.index])
    text = table.map(lambda v: "" if pd.isna(v) else f"{v:+.2f}")
    lim = float(np.nanmax(np.abs(table.to_numpy()))) if table.notna().any().any() else 1.0
    fig = go.Figure(go.Heatmap(
        z=table.to_numpy(), x=[str(c) for c in table.columns], y=[labels[f] for f in table.index], text=text.to_numpy(),
        texttemplate="%{text}", colorscale="RdBu_r", zmid=0, zmin=-lim, zmax=lim,
        colorbar=dict(title=dict(text="SD", side="right"), thickness=12),
        hovertemplate="%{y} · %{x}<br>top-k − all: %{z:.2f} SD<extra></extra>",
    ))
    fig.update_layout(title=title, height=340, margin=dict(l=10, r=10, t=40, b=10))
    return fig
