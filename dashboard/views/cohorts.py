"""Cohorts: what is ingested (images per class, nuclei and edges per image, detector) and how it went."""

import plotly.express as px
import streamlit as st

from nucleograph.dashboard import data

reader = data.connect()
st.title("Cohorts")

all_cohorts = data.cohorts(reader)
cohort = st.session_state.get("cohort")
if not all_cohorts or cohort is None:
    st.info("No cohorts yet. Ingest images with `nucleograph ingest PATH --cohort NAME` "
            "(or try `nucleograph synth breast --n 10 --out demo` first).")
    st.stop()

st.dataframe(all_cohorts, hide_index=True, column_config={"runs": "model runs"})

images = data.cohort_images(reader, cohort=cohort)
st.header(f"Cohort {cohort}")
if images.empty:
    st.info(f"Cohort {cohort} has no images stored in Neo4j.")
else:
    cols = st.columns(5)
    cols[0].metric("images", f"{len(images):,}")
    cols[1].metric("nuclei", f"{int(images['n_nuclei'].fillna(0).sum()):,}")
    cols[2].metric("edges", f"{int(images['n_edges'].fillna(0).sum()):,}")
    cols[3].metric("classes", images["label"].nunique())
    cols[4].metric("detector", ", ".join(sorted(images["detector"].dropna().astype(str).unique())) or "?")

    per_class = images.groupby(images["label"].fillna("(unlabelled)")).size().reset_index(name="images")
    left, right = st.columns(2)
    left.plotly_chart(
        px.bar(per_class, x="label", y="images", color="label", title="Images per class", text="images")
        .update_layout(showlegend=False, height=340, margin=dict(t=40, b=10)),
        key="per_class",
    )
    right.plotly_chart(
        px.scatter(images, x="n_nuclei", y="n_edges", color="label", hover_data=["id", "patient"],
                   title="Nuclei and edges per image", labels={"n_nuclei": "nuclei", "n_edges": "NEAR edges"})
        .update_layout(height=340, margin=dict(t=40, b=10)),
        key="per_image",
    )
    left, right = st.columns(2)
    for col, field, name in ((left, "n_nuclei", "nuclei"), (right, "n_edges", "edges")):
        col.plotly_chart(
            px.box(images, x="label", y=field, color="label", points="all", hover_data=["id"],
                   title=f"{name.capitalize()} per image by class", labels={field: name})
            .update_layout(showlegend=False, height=300, margin=dict(t=40, b=10)),
            key=f"box_{field}",
        )
    with st.expander(f"All {len(images)} images", expanded=False):
        st.dataframe(images, hide_index=True, column_config={
            "n_nuclei": st.column_config.NumberColumn("nuclei"), "n_edges": st.column_config.NumberColumn("edges"),
            "segmentation": None})  # an internal key

st.header("Ingest records")
log = data.ingest_log(reader, cohort=cohort)
if log.empty:
    st.info("No ingest records in SQL for this cohort (it was ingested elsewhere, or the records were reset).")
else:
    counts = log.groupby("status").size().to_dict()
    st.write(" · ".join(f"**{k}**: {v}" for k, v in sorted(counts.items())))
    failed = log[log["status"] == "failed"]
    if not failed.empty:
        st.error(f"{len(failed)} ingest attempt(s) failed")
        st.dataframe(failed[["created_at", "path", "error"]], hide_index=True)
    with st.expander("Every ingest attempt (newest first)", expanded=failed.empty and len(log) <= 20):
        st.dataframe(log, hide_index=True, column_config={"seconds": st.column_config.NumberColumn(format="%.2f")})
