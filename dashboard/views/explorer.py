"""Image explorer: one image with its nuclei coloured by a run's importance scores, its edges, one
nucleus's features and neighbours, and the run's prediction for the image."""

import pandas as pd
import streamlit as st

from nucleograph.dashboard import data, plots, stats

reader = data.connect()
st.title("Image explorer")

cohort = st.session_state.get("cohort")
if cohort is None:
    st.info("No cohorts yet: ingest images with `nucleograph ingest PATH --cohort NAME`.")
    st.stop()
images = data.cohort_images(reader, cohort=cohort)
if images.empty:
    st.info(f"Cohort {cohort} has no images.")
    st.stop()

ids = images["id"].tolist()
by_id = images.set_index("id")
if st.session_state.get("explorer_image") not in ids:
    wanted = st.query_params.get("image")
    st.session_state["explorer_image"] = wanted if wanted in ids else ids[0]
expls = data.explanations(reader, cohort=cohort)
keys = [None] + [e["key"] for e in expls]
expl_by_key = {e["key"]: e for e in expls}
if "explorer_expl" not in st.session_state or st.session_state["explorer_expl"] not in keys:
    st.session_state["explorer_expl"] = keys[1] if len(keys) > 1 else None

c1, c2, c3, c4 = st.columns([3, 4, 2, 1.3])
image_id = c1.selectbox(
    "Image", ids, key="explorer_image",
    format_func=lambda i: f"{by_id.at[i, 'label']} · {i} · {int(by_id.at[i, 'n_nuclei'] or 0)} nuclei",
)
key = c2.selectbox("Importance (run · model · method)", keys, key="explorer_expl",
                   format_func=lambda k: "none (colour by area)" if k is None else stats.explanation_label(expl_by_key[k]))
scale = c3.selectbox("Colour scale", plots.COLOUR_SCALES, key="explorer_scale")
show_edges = c4.toggle("Edges", value=True, key="explorer_edges")
if not expls:
    st.info("No explanations for this cohort yet: nuclei are coloured by area. Train and explain a run with "
            "`nucleograph train --cohort ...` then `nucleograph explain --run RUN_ID`.")

expl = expl_by_key.get(key)
prop = expl["property"] if expl else None
graph = data.image_graph(reader, image_id=image_id, prop=prop)
if graph is None:
    st.warning(f"Image {image_id} is gone from Neo4j; refresh the data.")
    st.stop()
nuclei, meta = graph["nuclei"], graph["meta"]
has_scores = bool(prop) and nuclei["score"].notna().any()
if prop and not has_scores:
    st.info("This image has no scores under the chosen explanation (it was not explained); colouring by area.")

# A click or lasso on the chart selects a nucleus; it is applied once, so the picker can still change it.
nids = nuclei["nid"].tolist()
chosen = st.session_state.get("explorer_chart")
points = (chosen or {}).get("selection", {}).get("points", []) if isinstance(chosen, dict) else []
if points and points[0].get("customdata"):
    picked = (image_id, int(points[0]["customdata"][0]))
    if st.session_state.get("explorer_picked") != picked:
        st.session_state["explorer_picked"] = picked
        st.session_state["explorer_nid"] = picked[1]
if st.session_state.get("explorer_nid") not in nids:
    st.session_state["explorer_nid"] = None

left, right = st.columns([3, 1.25])
with right:
    run_id = expl["run_id"] if expl else None
    if run_id is None:
        cohort_runs = data.runs(reader, cohort=cohort)
        run_id = cohort_runs[0]["id"] if cohort_runs else None
    st.subheader("Prediction")
    st.caption(f"true class **{meta['label']}** · patient {meta['patient']} · {meta['width']}×{meta['height']} px")
    pred = data.image_prediction(reader, run_id=run_id, image_id=image_id) if run_id else None
    if pred is None:
        st.info("No model run has predicted this image yet." if run_id is None else
                f"Run {run_id} holds no prediction for this image.")
    else:
        ok = "(correct)" if pred["pred"] == meta["label"] else "(wrong)"
        st.metric(f"run {run_id} ({pred['split']})", f"{pred['pred']} {ok}", f"p = {pred['prob']:.3f}",
                  delta_color="off")
        if pred.get("probs") and pred.get("class_names"):
            st.dataframe(pd.DataFrame({"class": pred["class_names"], "probability": pred["probs"]}),
                         hide_index=True, column_config={"probability": st.column_config.ProgressColumn(
                             min_value=0.0, max_value=1.0, format="%.3f")})
    st.subheader("Nucleus")
    nid = st.selectbox("Nucleus id (or click one in the image)", nids, key="explorer_nid",
                       placeholder="click a nucleus")
    neigh = pd.DataFrame()
    if nid is not None:
        uid = f"{image_id}:{nid}"
        info = data.nucleus(reader, uid=uid, prop=prop)
        neigh = data.neighbours(reader, uid=uid, prop=prop)
        if info is not None:
            a, b = st.columns(2)
            a.metric("score", "–" if info["score"] is None else f"{info['score']:.4g}")
            b.metric("degree", info["degree"])
            if has_scores and info["score"] is not None:
                rank = int((nuclei["score"] > info["score"]).sum()) + 1
                st.caption(f"rank {rank} of {nuclei['score'].notna().sum()} in this image")
            skip = {"uid", "image_id", "features"}
            feats = {k: v for k, v in sorted(info["props"].items()) if k not in skip}
            st.dataframe(pd.DataFrame({"feature": list(feats), "value": [str(v) for v in feats.values()]}),
                         hide_index=True, height=260)
            st.caption(f"{len(neigh)} neighbours (nearest first)")
            st.dataframe(neigh, hide_index=True, height=200,
                         column_config={c: st.column_config.NumberColumn(format="%.3g")
                                        for c in ("dist", "weight", "area", "hematoxylin", "score")})

with left:
    colour, title = ("score", f"{expl['method']} importance") if has_scores else ("area", "area (px²)")
    source, why = data.image_source(meta["path"])
    if source is None:
        st.warning(f"Image pixels unavailable ({why}); drawing the nuclei alone.")
    fig = plots.overlay(meta, nuclei, source=source, src=graph["src"] if show_edges else None, dst=graph["dst"],
                        colour=colour, colour_title=title, colour_scale=scale,
                        highlight=neigh["nid"].tolist() if not neigh.empty else None, selected=nid)
    st.plotly_chart(fig, key="explorer_chart", on_select="rerun", selection_mode=("points", "box", "lasso"),
                    config={"scrollZoom": True})
    st.caption(f"{len(nuclei):,} nuclei · {meta['n_edges'] or 0:,} NEAR edges · detector {meta['detector']} · "
               "scroll to zoom, drag to pan, click a nucleus to inspect it")
