"""Cypher: a read-only console with a library of named neighbourhood queries. Results show as a
table and, when they hold nuclei, drawn over their image. Writes are refused by the server."""

import json

import pandas as pd
import streamlit as st

from nucleograph.dashboard import data, plots, stats
from nucleograph.db.queries import CONSOLE_LIBRARY
from nucleograph.errors import NucleographError

reader = data.connect()
st.title("Cypher")
st.caption("Read-only: every query runs in a READ transaction, so the server refuses CREATE, MERGE, SET, "
           "DELETE and write procedures here.")

cohort = st.session_state.get("cohort")
images = data.cohort_images(reader, cohort=cohort) if cohort else None
first_image = images["id"].iloc[0] if images is not None and not images.empty else ""
expls = data.explanations(reader, cohort=cohort) if cohort else []
defaults = {"image_id": first_image, "cohort": cohort or "", "property": expls[0]["property"] if expls else ""}


def load_example() -> None:
    entry = CONSOLE_LIBRARY[st.session_state["cypher_example"]]
    params = {k: (defaults.get(k) or v) if v == "" else v for k, v in entry["params"].items()}
    st.session_state["cypher_query"] = entry["query"]
    st.session_state["cypher_params"] = json.dumps(params, indent=1)


names = list(CONSOLE_LIBRARY)
if "cypher_query" not in st.session_state:
    st.session_state["cypher_example"] = names[0]
    load_example()
st.selectbox("Query library", names, key="cypher_example", on_change=load_example,
             help="Pick a named query; it fills the editor with the query and parameters for the current cohort.")
st.caption(CONSOLE_LIBRARY[st.session_state["cypher_example"]]["help"])
left, right = st.columns([3, 1])


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number Neo4j can store (strict JSON has no NaN or Infinity)")


query = left.text_area("Query", key="cypher_query", height=160)
params_text = right.text_area("Parameters (JSON)", key="cypher_params", height=160)
limit = right.number_input("Row limit", 1, 100_000, 1000, key="cypher_limit")

if st.button("Run", type="primary", key="cypher_run"):
    try:
        params = json.loads(params_text or "{}", parse_constant=_no_constant)
        if not isinstance(params, dict):
            raise ValueError("parameters must be a JSON object, e.g. {\"image_id\": \"ab12\"}")
    except ValueError as exc:
        st.session_state["cypher_result"] = {"error": f"Parameters are not valid JSON: {exc}"}
    else:
        try:
            with st.spinner("Running the query..."):
                columns, rows = data.console_read(reader, query=query, params_json=json.dumps(params, sort_keys=True),
                                                 limit=int(limit))
            st.session_state["cypher_result"] = {"columns": columns, "rows": rows}
        except NucleographError as exc:
            st.session_state["cypher_result"] = {"error": str(exc)}
        except OverflowError:  # the driver's message for an integer outside 64 bits names no parameter
            st.session_state["cypher_result"] = {
                "error": "A parameter's integer is outside Neo4j's 64-bit range: pass it as a float or as text"}

result = st.session_state.get("cypher_result")
if result is None:
    st.info("Run a query to see its results.")
elif "error" in result:
    st.error(result["error"])
else:
    columns, rows = result["columns"], result["rows"]
    st.write(f"{len(rows)} row(s)" + (" (row limit reached)" if len(rows) >= limit else ""))
    shown = [{c: json.dumps(v, default=str) if isinstance(v, (dict, list)) else v for c, v in r.items()} for r in rows]
    st.dataframe(shown, hide_index=True, column_order=columns)
    st.download_button("Results (CSV)", pd.DataFrame(shown, columns=columns).to_csv(index=False), "results.csv",
                       "text/csv", key="cypher_csv", on_click="ignore", icon=":material/download:")
    points = stats.nucleus_points(columns, rows)
    if not points.empty:
        counts = points["image_id"].value_counts()
        image_id = counts.index[0]
        if len(counts) > 1:
            image_id = st.selectbox("Image to draw", list(counts.index), key="cypher_image",
                                    format_func=lambda i: f"{i} ({counts[i]} nuclei)")
        meta = data.image_meta(reader, image_id=image_id, cohort=cohort or None)
        if meta is None:
            st.warning(f"Image {image_id} is not in Neo4j.")
        else:
            source, why = data.image_source(meta["path"])
            if source is None:
                st.warning(f"Image pixels unavailable ({why}); drawing the nuclei alone.")
            st.plotly_chart(plots.points_over_image(meta, points[points["image_id"] == image_id], source=source),
                            key="cypher_plot", config={"scrollZoom": True})
            st.caption(f"{int(counts[image_id])} result nuclei drawn over image {image_id}")
