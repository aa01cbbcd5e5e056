"""Image explorer: one image with its nuclei coloured by a run's importance scores, its edges, one
nucleus's features and neighbours, and the run's prediction for the image with its split (test
images only by default)."""

import pandas as pd
import streamlit as st

from nucleograph.dashboard import data, plots, selection, stats
from nucleograph.gnn.render import default_scaling
from nucleograph.ingest.readers import read_image

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
expls = data.explanations(reader, cohort=cohort)
keys = [None] + [e["key"] for e in expls]
expl_by_key = {e["key"]: e for e in expls}
if "explorer_expl" not in st.session_state or st.session_state["explorer_expl"] not in keys:
    st.session_state["explorer_expl"] = keys[1] if len(keys) > 1 else None

# The run (the explanation's, else the newest) decides each image's split, so it is picked first.
c1, c2, c3 = st.columns([3, 4, 1.6])
key = c2.selectbox("Importance (run · model · method)", keys, key="explorer_expl", help=stats.methods_help(),
                   format_func=lambda k: "none (colour by area)" if k is None else stats.explanation_label(expl_by_key[k]))
expl = expl_by_key.get(key)
prop = expl["property"] if expl else None
run_id = expl["run_id"] if expl else None
if run_id is None:
    cohort_runs = data.runs(reader, cohort=cohort)
    run_id = cohort_runs[0]["id"] if cohort_runs else None
preds = data.run_predictions(reader, run_id=run_id) if run_id else None
split_of = dict(zip(preds["image_id"], preds["split"], strict=True)) if preds is not None else {}
has_test = "test" in split_of.values()
wanted = st.query_params.get("image")
if "explorer_test_only" not in st.session_state:
    # on by default: a training image's prediction says nothing about how the model generalises
    st.session_state["explorer_test_only"] = has_test and (wanted not in ids or split_of.get(wanted) == "test")
test_only = c3.toggle("Test images only", key="explorer_test_only", disabled=not has_test,
                      help=f"only the images run {run_id} held out for testing" if has_test else
                      "the chosen run has no test images")
shown_ids = [i for i in ids if split_of.get(i) == "test"] if test_only and has_test else ids
if st.session_state.get("explorer_image") not in shown_ids:
    st.session_state["explorer_image"] = wanted if wanted in shown_ids else shown_ids[0]
if st.session_state.get("explorer_image_run") != run_id:
    # The labels show each image's split in the run. Streamlit does not redraw a selectbox's shown label
    # when only format_func's output changes (streamlit PR 13788); a value set from code is sent again.
    st.session_state["explorer_image_run"] = run_id
    st.session_state["explorer_image"] = st.session_state["explorer_image"]
image_id = c1.selectbox(
    "Image", shown_ids, key="explorer_image",
    format_func=lambda i: (f"{by_id.at[i, 'label']} · {i} · {int(by_id.at[i, 'n_nuclei'] or 0)} nuclei"
                           + (f" · {split_of[i]}" if i in split_of else "")),
)
d1, d2, d3 = st.columns([2, 4, 1.3])
scale = d1.selectbox("Colour scale", plots.COLOUR_SCALES, key="explorer_scale")
if st.session_state.get("explorer_scaling_for") != key:  # a new explanation starts at its method's scaling
    st.session_state["explorer_scaling"] = default_scaling(expl["method"]) if expl else "relative"
    st.session_state["explorer_scaling_for"] = key
scaling = d2.selectbox("Score scaling", list(stats.SCALINGS), key="explorer_scaling", format_func=stats.SCALINGS.get,
                       help="relative: as `nucleograph render` draws it; linear shows occlusion maps almost binary; "
                            "local evidence and contribution start at rank, as `render` draws them")
show_edges = d3.toggle("Edges", value=False, key="explorer_edges")
if not expls:
    st.info("No explanations for this cohort yet: nuclei are coloured by area. Train and explain a run with "
            "`nucleograph train --cohort ...` then `nucleograph explain --run RUN_ID`.")

with st.spinner("Reading the image's nuclei and edges..."):
    graph = data.image_graph(reader, cohort=cohort, image_id=image_id, prop=prop)
if graph is None:
    st.warning(f"Image {image_id} is gone from Neo4j; refresh the data.")
    st.stop()
nuclei, meta = graph["nuclei"], graph["meta"]
has_scores = bool(prop) and nuclei["score"].notna().any()
if expl and image_id in (expl.get("stale_images") or []):
    st.warning(f"This image was re-ingested into {cohort} after run {run_id} explained it: its nuclei changed and "
               f"the scores shown are missing. Explain it again: `nucleograph explain --run {run_id} --method "
               f"{expl['method']}" + (f" --hops {expl['hops']} --output {expl['output']}" if expl.get("output") else "")
               + f" --image {image_id}`.")
elif prop and not has_scores:
    st.info("This image has no scores under the chosen explanation (it was not explained); colouring by area.")

# A click or lasso on the chart selects a nucleus. It is applied once per selection event (the
# selection stays in the state across reruns), so the picker can still change the nucleus, and a
# selection made on another image is not applied to this one.
nids = nuclei["nid"].tolist()
chart_state = st.session_state.get("explorer_chart")
clicked = selection.selected_nid(chart_state, nids=nids)
if clicked is not None:
    event = selection.event_signature(chart_state)
    if st.session_state.get("explorer_picked") != event:
        st.session_state["explorer_picked"] = event
        st.session_state["explorer_nid"] = clicked
if st.session_state.get("explorer_nid") not in nids:
    st.session_state["explorer_nid"] = None

left, right = st.columns([3, 1.25])
with right:
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
        trust = stats.map_trust(expl.get("evaluation"), pred["pred"]) if expl else None
        if trust is not None:
            (st.warning if trust[0] == "poor" else st.caption)(trust[1])
        if pred["split"] == "test":
            st.caption("split **test**: held out, the model never trained on this image")
        else:
            st.caption(f":orange[split **{pred['split']}**: the model "
                       f"{'trained on' if pred['split'] == 'train' else 'chose its epoch on'} this image, so this "
                       "prediction says little about how it generalises]")
        if pred.get("probs") and pred.get("class_names"):
            st.dataframe(pd.DataFrame({"class": pred["class_names"], "probability": pred["probs"]}),
                         hide_index=True, column_config={"probability": st.column_config.ProgressColumn(
                             min_value=0.0, max_value=1.0, format="%.3f")})
    st.subheader("Nucleus")
    nid = st.selectbox("Nucleus id (or click one in the image)", nids, key="explorer_nid",
                       placeholder="click a nucleus")
    neigh = pd.DataFrame()
    if nid is not None:
        uid = f"{meta['segmentation']}:{nid}"
        info = data.nucleus(reader, uid=uid, prop=prop)
        neigh = data.neighbours(reader, uid=uid, prop=prop)
        if info is not None:
            a, b = st.columns(2)
            a.metric("score", "–" if info["score"] is None else f"{info['score']:.4g}")
            b.metric("degree", info["degree"])
            if has_scores and info["score"] is not None:
                rank = int((nuclei["score"] > info["score"]).sum()) + 1
                st.caption(f"rank {rank} of {nuclei['score'].notna().sum()} in this image")
            st.dataframe(stats.feature_table(info["props"]), hide_index=True, height=260)
            st.caption(f"{len(neigh)} neighbours (nearest first)")
            st.dataframe(neigh, hide_index=True, height=200, column_config=data.NEIGHBOUR_COLUMNS)

with left:
    scaled = {"relative": " (relative)", "log": " (signed log)", "rank": " (rank in the image)"}.get(scaling, "")
    colour, title = ("score", f"{stats.method_title(expl)}{scaled}") if has_scores else ("area", "area (px²)")
    source, why = data.image_source(meta["path"])
    if source is None:
        st.warning(f"Image pixels unavailable ({why}); drawing the nuclei alone.")
    fig = plots.overlay(meta, nuclei, source=source, src=graph["src"] if show_edges else None, dst=graph["dst"],
                        colour=colour, colour_title=title, colour_scale=scale, scaling=scaling,
                        highlight=neigh["nid"].tolist() if not neigh.empty else None, selected=nid)
    st.plotly_chart(fig, key="explorer_chart", on_select="rerun", selection_mode=("points", "box", "lasso"),
                    config={"scrollZoom": True})
    st.caption(f"{len(nuclei):,} nuclei · {meta['n_edges'] or 0:,} NEAR edges · detector {meta['detector']} · "
               "scroll to zoom, drag to pan, click a nucleus to inspect it (nuclei are drawn at their centroids: "
               "the graph stores no outlines)")
    stem = f"{image_id}_{prop or 'area'}"
    b1, b2, _ = st.columns([1, 1, 2])
    b1.download_button("Scores (CSV)", nuclei.assign(image_id=image_id).to_csv(index=False), f"{stem}.csv",
                       "text/csv", key="explorer_csv", on_click="ignore", icon=":material/download:")
    if has_scores and source is not None:
        # drawn only when clicked (a callable runs on download), by `nucleograph render`'s function
        b2.download_button(
            "Heat map (PNG)", lambda: plots.heatmap_png(
                read_image(meta["path"]), nuclei, src=graph["src"] if show_edges else None, dst=graph["dst"],
                title=f"{meta['label']} | {image_id} | {stats.method_title(expl)}, run {expl['run_id']}"),
            f"{stem}.png", "image/png", key="explorer_png", on_click="ignore", icon=":material/download:")
