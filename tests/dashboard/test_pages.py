"""An AppTest per dashboard page against a small ingested, trained and explained cohort in the real
local Neo4j; the console refuses writes and changes nothing."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import streamlit as st
from apptest_helpers import assert_clean, open_page

from nucleograph.db import store

pytestmark = pytest.mark.neo4j

# st.session_state["explorer_chart"] after a real click on a nucleus in headless Chromium
CLICK = json.loads((Path(__file__).parent / "plotly_click_selection.json").read_text())["state"]


def _plotly_charts(at):
    return at.get("plotly_chart")


def test_cohorts_page_counts_what_is_stored(dash_cohort, test_environ, graphdb):
    at = open_page("cohorts", dash_cohort["name"])
    assert_clean(at)
    counts = store.cohort_counts(graphdb, dash_cohort["name"])
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["images"] == str(counts["images"]) == str(dash_cohort["images"])
    assert metrics["nuclei"] == f"{counts['nuclei']:,}"
    assert metrics["edges"] == f"{counts['edges']:,}"
    assert metrics["classes"] == "2" and metrics["detector"] == "watershed"
    assert len(_plotly_charts(at)) == 4
    assert any("stored" in m.value for m in at.markdown)  # SQL ingest records by status


def test_explorer_colours_by_importance_and_inspects_a_nucleus(dash_cohort, test_environ, driver):
    at = open_page("explorer", dash_cohort["name"])
    assert_clean(at)
    assert at.session_state["explorer_expl"] is not None  # an explanation is chosen by default
    assert not at.info or all("no scores" not in i.value for i in at.info)
    assert len(_plotly_charts(at)) == 1
    image_id = at.session_state["explorer_image"]
    pred = next(m for m in at.metric if m.label.startswith(f"run {dash_cohort['run_id']}"))
    assert pred.value.split()[0] in {"InSitu", "Invasive"}

    rows, _, _ = driver.execute_query(
        "MATCH (:Image {id: $i})-[:HAS_SEGMENTATION]->()-[:HAS_NUCLEUS]->(n:Nucleus) WITH n, COUNT { (n)-[:NEAR]-() } AS d "
        "WHERE d > 0 RETURN n.nid AS nid, d ORDER BY d DESC LIMIT 1",
        i=image_id, database_=test_environ.neo4j_database)
    nid, degree = rows[0]["nid"], rows[0]["d"]
    at.selectbox(key="explorer_nid").set_value(nid).run()
    assert_clean(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["degree"] == str(degree)
    assert metrics["score"] != "–"
    neighbours = at.dataframe[-1].value
    assert len(neighbours) == degree and list(neighbours["dist"]) == sorted(neighbours["dist"])

    features = at.dataframe[-2].value
    numbers = [float(v) for v in features["value"] if _is_number(v)]
    assert numbers and all(x.is_integer() or f"{x:.4g}" in set(features["value"]) for x in numbers)  # rounded
    assert len(at.get("download_button")) == 2  # scores CSV, heat-map PNG

    assert at.toggle(key="explorer_edges").value is False  # edges off by default
    at.toggle(key="explorer_edges").set_value(True).run()
    assert at.selectbox(key="explorer_scaling").value == "relative"  # occlusion and attention: as measured
    at.selectbox(key="explorer_scaling").set_value("log").run()
    assert at.selectbox(key="explorer_scaling").value == "log"  # the user's choice holds while the explanation does
    picker = at.selectbox(key="explorer_expl")
    other = next(i for i in range(1, len(picker.options)) if i != picker.index)  # index 0: none
    before = at.session_state["explorer_expl"]
    picker.select_index(other).run()
    assert at.session_state["explorer_expl"] not in (before, None)
    assert at.selectbox(key="explorer_scaling").value == "relative"  # another explanation: its method's scaling
    at.selectbox(key="explorer_expl").set_value(None).run()
    assert_clean(at)


def test_each_method_opens_at_its_scaling():
    from nucleograph.db.runs import METHODS
    from nucleograph.gnn.render import default_scaling

    # local evidence is read by its order (nearly all its scores are negative on a confident model)
    assert {m: default_scaling(m) for m in METHODS} == {**dict.fromkeys(METHODS, "relative"), "local": "rank",
                                                        "contribution": "rank"}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _nucleus_with_neighbours(driver, database, image_id) -> tuple[int, int]:
    rows, _, _ = driver.execute_query(
        "MATCH (:Image {id: $i})-[:HAS_SEGMENTATION]->()-[:HAS_NUCLEUS]->(n:Nucleus) WITH n, COUNT { (n)-[:NEAR]-() } AS d "
        "WHERE d > 0 RETURN n.nid AS nid, d ORDER BY d DESC, n.nid LIMIT 1", i=image_id, database_=database)
    return rows[0]["nid"], rows[0]["d"]


def test_explorer_click_as_a_browser_sends_it_opens_the_nucleus(dash_cohort, test_environ, driver):
    at = open_page("explorer", dash_cohort["name"])
    nid, degree = _nucleus_with_neighbours(driver, test_environ.neo4j_database, at.session_state["explorer_image"])
    click = copy.deepcopy(CLICK)
    click["selection"]["points"][0]["customdata"]["0"] = nid  # the captured payload, pointed at this image
    at.session_state["explorer_chart"] = click
    at.run()
    assert_clean(at)
    assert at.session_state["explorer_nid"] == nid
    assert {m.label: m.value for m in at.metric}["degree"] == str(degree)
    # the picker still wins over a selection already applied
    other = next(n for n in at.selectbox(key="explorer_nid").options if str(n) != str(nid))
    at.selectbox(key="explorer_nid").set_value(int(other)).run()
    assert_clean(at)
    assert at.session_state["explorer_nid"] == int(other)


def test_explorer_survives_a_malformed_selection(dash_cohort, test_environ):
    at = open_page("explorer", dash_cohort["name"])
    at.session_state["explorer_chart"] = {"selection": {"points": [{"customdata": {"dtype": "f8", "bdata": "!!"}}]}}
    at.run()
    assert_clean(at)
    assert at.session_state["explorer_nid"] is None


def test_explorer_shows_the_split_and_defaults_to_test_images(split_cohort, test_environ):
    st.cache_data.clear()  # the cohort list is cached for a minute; this cohort is new
    split = split_cohort["split"]
    test_ids = sorted(i for i, s in split.items() if s == "test")
    assert test_ids and len(test_ids) < len(split)  # a single split: some images trained on
    at = open_page("explorer", split_cohort["name"])
    assert_clean(at)
    assert at.session_state["explorer_test_only"] is True
    assert sorted(at.selectbox(key="explorer_image").options) == sorted(
        o for o in at.selectbox(key="explorer_image").options if o.split(" · ")[-1] == "test")
    assert len(at.selectbox(key="explorer_image").options) == len(test_ids)
    assert any("split **test**" in c.value for c in at.caption)
    at.toggle(key="explorer_test_only").set_value(False).run()
    assert len(at.selectbox(key="explorer_image").options) == len(split)
    train_id = next(i for i, s in split.items() if s == "train")
    at.selectbox(key="explorer_image").set_value(train_id).run()
    assert_clean(at)
    assert any("split **train**" in c.value for c in at.caption)
    assert next(m for m in at.metric if m.label.startswith("run ")).label.endswith("(train)")


def test_explorer_without_runs_says_so(dash_cohort, test_environ):
    at = open_page("explorer", dash_cohort["bare"])
    assert_clean(at)
    infos = " ".join(i.value for i in at.info)
    assert "No explanations" in infos and "No model run" in infos
    assert len(_plotly_charts(at)) == 1  # the image and its nuclei, coloured by area


def test_patterns_compares_top_k_with_all_and_two_methods(dash_cohort, test_environ):
    at = open_page("patterns", dash_cohort["name"])
    assert_clean(at)
    assert len(_plotly_charts(at)) == 5  # effects, boxes, by degree, by density, where
    other = [o for o in at.selectbox(key="patterns_b").options if o != "nothing"]
    assert len(other) == 1  # occlusion and attention of one run
    at.selectbox(key="patterns_b").select_index(1).run()
    at.slider(key="patterns_k").set_value(5).run()
    assert_clean(at)
    assert any(h.value == "Agreement of A and B" for h in at.header)
    jaccard = next(m for m in at.metric if "Jaccard" in m.label)
    assert 0.0 <= float(jaccard.value) <= 1.0
    assert len(_plotly_charts(at)) == 8  # two concept panels, position plots, overlap


def test_patterns_without_explanations_says_so(dash_cohort, test_environ):
    at = open_page("patterns", dash_cohort["bare"])
    assert_clean(at)
    assert "No explanations" in at.info[0].value


def test_models_page_shows_metrics_confusion_and_curves(dash_cohort, test_environ):
    at = open_page("models", dash_cohort["name"])
    assert_clean(at)
    assert at.session_state["models_run"] == dash_cohort["run_id"]
    assert {"accuracy", "balanced accuracy", "roc auc", "f1"} <= {m.label for m in at.metric}
    charts = _plotly_charts(at)
    assert len(charts) == 3  # confusion, curves, overlay
    confusion = json.loads(charts[0].proto.spec)["data"][0]
    cells = [int(t.split("<br>")[0]) for row in confusion["text"] for t in row]
    assert sum(cells) == dash_cohort["images"]  # two folds: every image is held out once
    at.radio(key="models_split").set_value("all").run()
    assert_clean(at)


def test_models_page_shows_stored_evaluations(dash_cohort, test_environ, graphdb):
    from nucleograph.gnn.evaluate import evaluate_run

    st.cache_data.clear()
    at = open_page("models", dash_cohort["name"])
    assert_clean(at)
    assert any(f"No evaluation of run {dash_cohort['run_id']}" in i.value for i in at.info)
    out = evaluate_run(graphdb, test_environ, dash_cohort["run_id"], method="attention", images=2, n_random=1,
                       truth=dash_cohort["synth"])
    st.cache_data.clear()  # evaluations are cached for a minute
    at = open_page("models", dash_cohort["name"])
    assert_clean(at)
    table = next(d.value for d in at.dataframe if "deletion" in d.value.columns)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row["explanation"], row["images"], row["stability vs"]) == ("attention", 2, "the next fold's model")
    for column, metric in (("deletion", "deletion_ratio"), ("insertion", "insertion_ratio"), ("ties", "tie_share"),
                           ("stability", "stability"), ("structure AUROC", "structure_auroc")):
        assert row[column] == pytest.approx(out["overall"][metric]["mean"]), column
    roles = {c.removeprefix("AUROC ") for c in table.columns if c.startswith("AUROC ")} - {"structure"}
    assert roles and roles == set(out["overall"]["role_auroc"])

    # the explorer says what was measured for the map it shows: the class the run predicts for the image
    evaluated = out["images"][0]
    at = open_page("explorer", dash_cohort["name"], explorer_test_only=False, explorer_image=evaluated["image_id"])
    at.selectbox(key="explorer_expl").set_value(out["key"]).run()
    assert_clean(at)
    assert at.session_state["explorer_image"] == evaluated["image_id"]
    group = out["by_class"][evaluated["predicted"]]
    shown = " ".join([c.value for c in at.caption] + [w.value for w in at.warning])
    assert (f"`evaluate` on {group['images']} images this run predicts {evaluated['predicted']}: deletion ratio "
            f"{group['deletion_ratio']['mean']:.2f}") in shown


def test_models_page_flags_a_run_at_chance(chance_cohort, test_environ):
    st.cache_data.clear()  # the cohort list is cached for a minute; this cohort is new
    at = open_page("models", chance_cohort["name"])
    assert_clean(at)
    warning = " ".join(w.value for w in at.warning)
    assert "0.667 is at or below chance: 0.667" in warning and "6 test images" in warning
    table = at.dataframe[0].value
    row = table[table["id"] == chance_cohort["run_id"]].iloc[0]
    assert row["vs chance"].startswith("⚠") and row["chance"] == pytest.approx(4 / 6)
    assert (row["epochs"], row["max epochs"]) == (3, 50)  # epochs trained, not the setting


def test_models_without_runs_says_so(dash_cohort, test_environ):
    at = open_page("models", dash_cohort["bare"])
    assert_clean(at)
    assert "No finished model runs" in at.info[0].value


def test_cypher_library_query_draws_nuclei_over_the_image(dash_cohort, test_environ):
    at = open_page("cypher", dash_cohort["name"])
    assert_clean(at)
    at.selectbox(key="cypher_example").set_value("Most connected nuclei of an image").run()
    params = json.loads(at.text_area(key="cypher_params").value)
    assert params["image_id"] in dash_cohort["image_ids"]
    at.button(key="cypher_run").click().run()
    assert_clean(at)
    table = at.dataframe[0].value
    assert len(table) == params["limit"] and list(table["degree"]) == sorted(table["degree"], reverse=True)
    assert len(_plotly_charts(at)) == 1
    assert any("result nuclei drawn over image" in c.value for c in at.caption)


def test_cypher_score_query_uses_an_explanation_property(dash_cohort, test_environ):
    at = open_page("cypher", dash_cohort["name"])
    at.selectbox(key="cypher_example").set_value("Top-scored nuclei of an image").run()
    params = json.loads(at.text_area(key="cypher_params").value)
    assert params["property"].startswith(f"imp_{dash_cohort['run_id']}_")
    at.button(key="cypher_run").click().run()
    assert_clean(at)
    scores = list(at.dataframe[0].value["score"])
    assert len(scores) == params["limit"] and scores == sorted(scores, reverse=True)
    assert len(at.get("download_button")) == 1  # the results as CSV


@pytest.mark.parametrize("query", [
    "CREATE (:DashEvil {x: 1}) RETURN 1",
    "MATCH (n:Nucleus) SET n.dash_evil = 1 RETURN count(n)",
    "MATCH (i:Image) DETACH DELETE i",
    "MERGE (:DashEvil {x: 2})",
])
def test_cypher_console_refuses_writes_and_changes_nothing(dash_cohort, test_environ, driver, query):
    db = test_environ.neo4j_database
    before, _, _ = driver.execute_query(
        "MATCH (n) RETURN count(n) AS nodes, COUNT { ()-[]->() } AS rels, "
        "COUNT { (m:Nucleus) WHERE m.dash_evil IS NOT NULL } AS marked", database_=db)
    at = open_page("cypher", dash_cohort["name"])
    at.text_area(key="cypher_query").set_value(query)
    at.text_area(key="cypher_params").set_value("{}")
    at.button(key="cypher_run").click().run()
    assert not at.exception
    assert at.error and "refused" in at.error[0].value
    after, _, _ = driver.execute_query(
        "MATCH (n) RETURN count(n) AS nodes, COUNT { ()-[]->() } AS rels, "
        "COUNT { (m:Nucleus) WHERE m.dash_evil IS NOT NULL } AS marked", database_=db)
    assert dict(after[0]) == dict(before[0]) and after[0]["marked"] == 0


def test_cypher_bad_parameters_are_reported(dash_cohort, test_environ):
    at = open_page("cypher", dash_cohort["name"])
    at.text_area(key="cypher_params").set_value("{not json")
    at.button(key="cypher_run").click().run()
    assert not at.exception
    assert "not valid JSON" in at.error[0].value
