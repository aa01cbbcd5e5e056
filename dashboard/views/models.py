"""Models: the cohort's runs with their metrics, confusion matrices and training curves."""

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from nucleograph.dashboard import data, plots, stats

reader = data.connect()
st.title("Models")

cohort = st.session_state.get("cohort")
if cohort is None:
    st.info("No cohorts yet: ingest images with `nucleograph ingest PATH --cohort NAME`.")
    st.stop()
runs = data.runs(reader, cohort=cohort)
recorded = data.sql_runs(reader, cohort=cohort)
unfinished = recorded[~recorded["id"].isin([r["id"] for r in runs])] if not recorded.empty else recorded
if not unfinished.empty:
    with st.expander(f"{len(unfinished)} run(s) recorded in SQL that did not finish", expanded=False):
        st.dataframe(unfinished, hide_index=True)
if not runs:
    st.info(f"No finished model runs for cohort {cohort} yet: `nucleograph train --cohort {cohort}`.")
    st.stop()

METRICS = ["accuracy", "balanced_accuracy", "roc_auc", "f1"]
chance = {r["id"]: stats.chance_rate(r) for r in runs}
table = pd.DataFrame([
    {"id": r["id"], "model": stats.model_title(r), "created": r.get("created_at", "")[:19],
     **{m: r.get(m) for m in METRICS},
     "chance": chance[r["id"]][0] if chance[r["id"]] else None,
     "vs chance": "⚠ at or below" if stats.at_or_below_chance(r) else None,
     "one output": f"⚠ {r['constant_output_share']:.0%}" if stats.constant_output(r) else None,
     "folds": r.get("folds"), "epochs": stats.epochs_run(r), "max epochs": r.get("epochs"),
     "images": r.get("n_images"), "parameters": r.get("n_parameters"), "seconds": r.get("seconds")}
    for r in runs
])
st.dataframe(table, hide_index=True, column_config={
    **{m: st.column_config.ProgressColumn(m.replace("_", " "), min_value=0.0, max_value=1.0, format="%.3f")
       for m in METRICS},
    "chance": st.column_config.NumberColumn(
        "chance", format="%.3f", help="accuracy of predicting the majority class of the test images for all"),
    "one output": st.column_config.TextColumn(
        "one output", help="share of the cohort's images the model answers with one and the same output (its "
                           "units died in training): flagged from "
                           f"{stats.CONSTANT_OUTPUT_WARN:.0%}"),
    "epochs": st.column_config.NumberColumn(
        "epochs", help="epochs trained (first fold; early stopping can end a run before its max epochs)"),
    "model": st.column_config.TextColumn(
        "model", help="×K: a seed ensemble, K models per split trained from different seeds, whose mean logits are "
                      "the run's model (`train --ensemble K`)"),
})

by_id = {r["id"]: r for r in runs}
c1, c2 = st.columns([3, 2])
run_id = c1.selectbox("Run", list(by_id), key="models_run",
                      format_func=lambda i: f"{i} · {stats.model_title(by_id[i])} · {by_id[i].get('created_at', '')[:19]}")
split = c2.radio("Confusion matrix of", ["test", "val", "train", "all"], horizontal=True, key="models_split",
                 help="test: held-out images (summed over folds); the others count stored predictions")
run = by_id[run_id]
cols = st.columns(len(METRICS))
for col, m in zip(cols, METRICS, strict=True):
    value = run.get(m)
    std = run.get(f"{m}_std")
    col.metric(m.replace("_", " "), "–" if value is None else f"{value:.3f}",
               None if std is None else f"± {std:.3f} over folds", delta_color="off")

preds = data.run_predictions(reader, run_id=run_id)
flag = stats.at_or_below_chance(run, preds)
if flag:
    st.warning(f"Run {run_id}: {flag}", icon=":material/warning:")
dead = stats.constant_output(run)
if dead:
    st.warning(f"Run {run_id}: {dead}", icon=":material/warning:")
left, right = st.columns(2)
with left:
    cm = stats.confusion(run, preds, split=split)
    if cm is None:
        st.info(f"No {split} predictions stored for this run.")
    else:
        st.plotly_chart(plots.confusion(cm[0], cm[1], title=f"Confusion matrix ({split}, n = {int(cm[0].sum())})"),
                        key="confusion")
with right:
    history = run.get("history") or []
    if history:
        size = int(run.get("ensemble") or 1)
        title = "Training curves (fold 1" + (f", member 1 of {size})" if size > 1 else ")")
        st.plotly_chart(plots.curves(history, title=title), key="curves")
    else:
        st.info("This run recorded no training history.")

compare = st.multiselect("Overlay validation curves of runs", list(by_id), default=[run_id], key="models_compare")
if compare:
    fig = go.Figure()
    for rid in compare:
        h = pd.DataFrame(by_id[rid].get("history") or [])
        if not h.empty and "val_accuracy" in h:
            fig.add_trace(go.Scatter(x=h["epoch"], y=h["val_accuracy"], mode="lines+markers",
                                     name=f"{rid} ({by_id[rid].get('model')})"))
    fig.update_layout(height=300, margin=dict(t=40, b=10), title="Validation accuracy", xaxis_title="epoch",
                      yaxis=dict(range=[0, 1.02]))
    st.plotly_chart(fig, key="compare")

st.subheader("Explanation evaluations")
evals = data.evaluations(reader, run_id=run_id)
if evals.empty:
    st.info(f"No evaluation of run {run_id}'s explanations yet: "
            f"`nucleograph evaluate --run {run_id}` (local contribution, the default; `--method local` for local "
            "evidence, `--method occlusion` for occlusion; add `--truth DIR` for a synthetic cohort).")
else:
    ratio = "area under the curve ÷ a random order's"
    st.dataframe(evals, hide_index=True, key="models_evaluations", column_config={
        "deletion": st.column_config.NumberColumn(format="%.3f", help=f"{ratio}: lower is better, < 1 is faithful"),
        "insertion": st.column_config.NumberColumn(format="%.3f", help=f"{ratio}: higher is better, > 1 is faithful"),
        "sparsity": st.column_config.NumberColumn(format="%.3f", help="share of the positive score in the top 10%"),
        "ties": st.column_config.NumberColumn(format="%.3f", help="share of nuclei whose score equals another's"),
        "stability": st.column_config.NumberColumn(format="%.3f", help="Spearman with a second model's scores"),
        **{c: st.column_config.NumberColumn(format="%.3f", help="the scores rank the role(s) above stroma; 0.5 = chance")
           for c in evals.columns if "AUROC" in c},
    })

with st.expander(f"Predictions of {run_id} ({len(preds)} images)"):
    st.dataframe(preds.assign(correct=preds["label"] == preds["pred"]), hide_index=True,
                 column_config={"prob": st.column_config.NumberColumn(format="%.3f")})
with st.expander("Run parameters"):
    st.json({k: v for k, v in run.items() if k not in {"history", "metrics"}}, expanded=False)
