"""Cohort patterns for a run: how the most important nuclei differ from all nuclei, class by class
(size, shape, hematoxylin, degree, local density), importance against graph position, and two
runs or methods side by side."""

import plotly.express as px
import streamlit as st

from nucleograph.dashboard import data, plots, stats

reader = data.connect()
st.title("Cohort patterns")

cohort = st.session_state.get("cohort")
if cohort is None:
    st.info("No cohorts yet: ingest images with `nucleograph ingest PATH --cohort NAME`.")
    st.stop()
expls = data.explanations(reader, cohort=cohort)
if not expls:
    st.info(f"No explanations for cohort {cohort} yet. Train a model and score its nuclei: "
            f"`nucleograph train --cohort {cohort}` then `nucleograph explain --run RUN_ID`.")
    st.stop()
by_key = {e["key"]: e for e in expls}
keys = list(by_key)

c1, c2, c3 = st.columns([4, 4, 2])
key_a = c1.selectbox("Explanation", keys, key="patterns_a", format_func=lambda k: stats.explanation_label(by_key[k]),
                     help=stats.methods_help())
others = [None] + [k for k in keys if k != key_a]
if st.session_state.get("patterns_b") not in others:
    st.session_state["patterns_b"] = None
key_b = c2.selectbox("Compare with", others, key="patterns_b",
                     format_func=lambda k: "nothing" if k is None else stats.explanation_label(by_key[k]))
k = c3.slider("top-k nuclei per image", 1, data.PATTERN_TOP_MAX, 10, key="patterns_k")

FEATURES = list(stats.SHAPE_FEATURES)


def concept_panel(key: str, *, slot: str) -> None:
    """The top-k-versus-all comparison for one explanation."""
    e = by_key[key]
    with st.spinner("Ranking every explained image's nuclei..."):
        df = data.patterns(reader, cohort=cohort, key=key)
    if df.empty:
        st.info("This explanation holds no scores for the cohort's images.")
        return
    st.caption(f"{df['image_id'].nunique()} images · top {k} per image against an even sample of "
               f"{int(df['sample'].sum()):,} of their {int(df.drop_duplicates('image_id')['total'].sum()):,} nuclei")
    effects = stats.effect_sizes(df, k, FEATURES)
    st.plotly_chart(plots.effect_heatmap(effects, stats.SHAPE_FEATURES,
                                         title=f"{stats.method_title(e)}: top-{k} minus all nuclei (SD of all)"),
                    key=f"effects_{slot}")
    feature = st.selectbox("Feature", FEATURES, key=f"patterns_feature_{slot}",
                           format_func=lambda f: stats.SHAPE_FEATURES[f])
    both = stats.top_vs_all(df, k)
    summary = stats.box_stats(both, feature, ["label", "group"])
    st.plotly_chart(plots.boxes(summary, x="label", group="group", y_title=stats.SHAPE_FEATURES[feature],
                                title=f"{stats.SHAPE_FEATURES[feature]}: top {k} vs all nuclei, by class"),
                    key=f"boxes_{slot}")
    with st.expander("Numbers"):
        st.dataframe(effects, hide_index=True, column_config={
            c: st.column_config.NumberColumn(format="%.3g") for c in ("d", "top_median", "all_median")})


if key_b is None:
    concept_panel(key_a, slot="a")
else:
    left, right = st.columns(2)
    with left:
        st.subheader("A")
        concept_panel(key_a, slot="a")
    with right:
        st.subheader("B")
        concept_panel(key_b, slot="b")

st.header("Importance against graph position")
with st.spinner("Ranking every explained image's nuclei..."):
    df = data.patterns(reader, cohort=cohort, key=key_a)
sample = df[df["sample"]]
if sample.empty:
    st.info("No scored nuclei to place.")
else:
    sample = stats.position_bins(sample)
    left, right = st.columns(2)
    by_degree = stats.importance_by(sample, "degree_bin")
    left.plotly_chart(
        px.line(by_degree[by_degree["nuclei"] >= 5], x="degree_bin", y="importance", color="label", markers=True,
                hover_data=["nuclei"], title="Mean importance percentile by degree",
                labels={"degree_bin": "degree (NEAR neighbours)", "importance": "importance percentile"})
        .update_layout(height=320, margin=dict(t=40, b=10)).update_yaxes(range=[0, 1]),
        key="by_degree",
    )
    by_density = stats.importance_by(sample, "density_bin")
    right.plotly_chart(
        px.line(by_density[by_density["nuclei"] >= 5], x="density_bin", y="importance", color="label", markers=True,
                hover_data=["nuclei"], title="Mean importance percentile by local density",
                labels={"density_bin": "local density (Σ NEAR weight)", "importance": "importance percentile"})
        .update_layout(height=320, margin=dict(t=40, b=10)).update_yaxes(range=[0, 1]),
        key="by_density",
    )
    top = df[df["rank"] < k]
    st.plotly_chart(
        px.density_heatmap(top, x="fx", y="fy", facet_col="label", nbinsx=12, nbinsy=9, range_x=[0, 1],
                           range_y=[1, 0], title=f"Where the top-{k} nuclei sit in their images",
                           labels={"fx": "x / width", "fy": "y / height"})
        .update_layout(height=300, margin=dict(t=50, b=10)),
        key="where",
    )

if key_b is not None:
    st.header("Agreement of A and B")
    with st.spinner("Ranking the second explanation's nuclei..."):
        df_b = data.patterns(reader, cohort=cohort, key=key_b)
    overlap = stats.topk_overlap(df, df_b, k)
    if overlap.empty:
        st.info("A and B share no explained images.")
    else:
        st.metric(f"mean top-{k} Jaccard overlap", f"{overlap['jaccard'].mean():.2f}",
                  help="per image: shared top-k nuclei / nuclei in either top-k")
        st.plotly_chart(
            px.box(overlap, x="label", y="jaccard", color="label", points="all", hover_data=["image_id"],
                   title=f"Top-{k} overlap per image").update_layout(height=300, showlegend=False,
                                                                      margin=dict(t=40, b=10)),
            key="overlap",
        )
