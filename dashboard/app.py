"""The nucleograph dashboard: ``nucleograph dashboard`` (or ``streamlit run dashboard/app.py``).

The entry point only picks the cohort (in the sidebar, shared by every page) and the page; the
pages (``views/``) read through :mod:`nucleograph.dashboard.data`, compute with
:mod:`nucleograph.dashboard.stats` and draw with :mod:`nucleograph.dashboard.plots`. The folder
is not called ``pages/``: Streamlit treats a ``pages/`` folder beside the entry point as a legacy
multipage app until ``st.navigation`` runs, so a fresh session (and ``AppTest.switch_page``) would run
a page script alone, without this sidebar.
"""

import streamlit as st

from nucleograph.dashboard import data

st.set_page_config(page_title="nucleograph", page_icon=":material/biotech:", layout="wide")

PAGES = [
    st.Page("views/cohorts.py", title="Cohorts", icon=":material/folder_open:", url_path="cohorts", default=True),
    st.Page("views/explorer.py", title="Image explorer", icon=":material/biotech:", url_path="explorer"),
    st.Page("views/slides.py", title="Slide viewer", icon=":material/zoom_in_map:", url_path="slides"),
    st.Page("views/patterns.py", title="Cohort patterns", icon=":material/insights:", url_path="patterns"),
    st.Page("views/models.py", title="Models", icon=":material/model_training:", url_path="models"),
    st.Page("views/cypher.py", title="Cypher", icon=":material/terminal:", url_path="cypher"),
]
page = st.navigation(PAGES)

reader = data.connect()
cohorts = data.cohorts(reader)
names = [c["name"] for c in cohorts]
with st.sidebar:
    if names:
        wanted = st.query_params.get("cohort")
        if "cohort" not in st.session_state or st.session_state["cohort"] not in names:
            st.session_state["cohort"] = wanted if wanted in names else names[0]
        st.selectbox("Cohort", names, key="cohort",
                     format_func=lambda n: f"{n} ({next(c['images'] for c in cohorts if c['name'] == n)} images)")
    else:
        st.session_state.pop("cohort", None)
    st.caption(f"Neo4j {reader.settings.neo4j_uri} · database {reader.settings.neo4j_database}")
    if st.button("Refresh data", help="drop cached query results (they expire after a minute anyway)"):
        st.cache_data.clear()

page.run()
