"""Render time of every dashboard page on a large cohort, cold (empty caches) and warm (cached).

Each page is run by Streamlit's AppTest against the Neo4j that the environment names, the same way
``nucleograph dashboard`` runs it: the time is the server-side script run (queries, pandas, Plotly
figure building and serialisation), not the browser's drawing. The budget is 2 s per page.

    NUCLEOGRAPH_HOME=/tmp/dashbench NEO4J_URI=bolt://127.0.0.1:7690 \\
        .venv/bin/python bench/bench_dashboard.py --cohort bench --prepare

``--prepare`` trains a small run (rsf-attention, 2 epochs) and scores its nuclei with attention (all
images) and occlusion (``--occlusion-images`` images) when the cohort has no explanation yet.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[1] / "dashboard" / "app.py"
BUDGET_S = 2.0


def prepare(cohort: str, occlusion_images: int) -> None:
    from nucleograph.config import Settings
    from nucleograph.db import runs as db_runs
    from nucleograph.db.graphdb import GraphDB
    from nucleograph.gnn.service import explain_run, train_cohort

    settings = Settings.from_env()
    with GraphDB.open(settings) as db:
        runs = db_runs.list_runs(db, cohort=cohort)
        if not runs:
            t = time.perf_counter()
            run = train_cohort(db, settings, cohort, model="rsf-attention", epochs=2, seed=0, patience=None,
                               progress=True)
            print(f"trained {run['run_id']} in {time.perf_counter() - t:.0f} s", file=sys.stderr)
            runs = db_runs.list_runs(db, cohort=cohort)
        run_id = runs[0]["id"]
        have = {e["method"] for e in db_runs.list_explanations(db, run_id=run_id)}
        if "attention" not in have:
            t = time.perf_counter()
            explain_run(db, settings, run_id, method="attention", progress=True)
            print(f"attention scores in {time.perf_counter() - t:.0f} s", file=sys.stderr)
        if "occlusion" not in have and occlusion_images:
            from nucleograph.db import store

            ids = [r["id"] for r in store.cohort_images(db, cohort)][:: max(1, 200 // occlusion_images)]
            t = time.perf_counter()
            explain_run(db, settings, run_id, method="occlusion", hops=1, image_ids=ids[:occlusion_images],
                        progress=True)
            print(f"occlusion scores in {time.perf_counter() - t:.0f} s", file=sys.stderr)


def _clear_caches() -> None:
    import streamlit as st

    st.cache_data.clear()


def render(page: str | None, cohort: str, state: dict | None = None, actions=None) -> tuple[float, float, AppTest]:
    """(cold seconds, warm seconds, app) for one page run by a new session.

    The session first lands on the default page (AppTest needs one run before switching); then the
    data caches are emptied and the switch to ``page`` is timed (cold), then a rerun (warm). The
    driver (``st.cache_resource``) stays open between pages, as on a running server.
    """
    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state["cohort"] = cohort
    for k, v in (state or {}).items():
        at.session_state[k] = v
    at.run()
    _clear_caches()
    t = time.perf_counter()
    if page is not None:
        at.switch_page(page)
    at.run()
    if actions:
        actions(at)
        at.run()
    cold = time.perf_counter() - t
    if at.exception:
        raise RuntimeError(f"{page}: {[e.value for e in at.exception]}")
    t = time.perf_counter()
    at.run()
    warm = time.perf_counter() - t
    return cold, warm, at


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cohort", required=True)
    p.add_argument("--prepare", action="store_true", help="train and explain a run first if there is none")
    p.add_argument("--occlusion-images", type=int, default=10)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.prepare:
        prepare(args.cohort, args.occlusion_images)

    # one warm-up session opens the driver and imports plotly/pandas once, as a running server would
    render(None, args.cohort)

    at = AppTest.from_file(str(APP), default_timeout=120)
    at.session_state["cohort"] = args.cohort
    at.run()
    at.switch_page("views/explorer.py").run()
    images = at.selectbox(key="explorer_image").options
    image_ids = [o.split(" · ")[1] for o in images]
    expl = at.selectbox(key="explorer_expl").options

    def pick_second(at_):
        options = at_.selectbox(key="patterns_b").options
        if len(options) > 1:
            at_.selectbox(key="patterns_b").select_index(1)

    def click_run(at_):
        at_.button(key="cypher_run").click()

    cases = [
        ("Cohorts", "views/cohorts.py", lambda i: {}, None),
        ("Image explorer", "views/explorer.py", lambda i: {"explorer_image": image_ids[(7 * i) % len(image_ids)]}, None),
        ("Image explorer + nucleus", "views/explorer.py",
         lambda i: {"explorer_image": image_ids[(7 * i + 3) % len(image_ids)], "explorer_nid": 5}, None),
        ("Cohort patterns", "views/patterns.py", lambda i: {}, None),
        ("Cohort patterns, A vs B", "views/patterns.py", lambda i: {}, pick_second),
        ("Models", "views/models.py", lambda i: {}, None),
        ("Cypher (library query run)", "views/cypher.py", lambda i: {}, click_run),
    ]
    results = []
    for name, page, state, action in cases:
        cold, warm = [], []
        for i in range(args.repeat):
            c, w, _ = render(page, args.cohort, state(i), action)
            cold.append(c)
            warm.append(w)
        results.append({"page": name, "cold_s": statistics.median(cold), "cold_max_s": max(cold),
                        "warm_s": statistics.median(warm), "budget_s": BUDGET_S,
                        "cold_over_budget": statistics.median(cold) / BUDGET_S})

    from nucleograph.config import Settings
    from nucleograph.db import store
    from nucleograph.db.graphdb import GraphDB

    with GraphDB.open(Settings.from_env()) as db:
        counts = store.cohort_counts(db, args.cohort)
    summary = {"cohort": args.cohort, **counts, "nuclei_per_image": counts["nuclei"] / max(1, counts["images"]),
               "explanations": len(expl) - 1, "repeat": args.repeat, "pages": results}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"cohort {args.cohort}: {counts['images']} images, {counts['nuclei']:,} nuclei "
          f"({summary['nuclei_per_image']:.0f} per image), {counts['edges']:,} edges; "
          f"{summary['explanations']} explanation(s); median of {args.repeat} runs; budget {BUDGET_S} s")
    print(f"{'page':30s} {'cold s':>8s} {'max s':>8s} {'warm s':>8s} {'cold/budget':>12s}")
    for r in results:
        print(f"{r['page']:30s} {r['cold_s']:8.2f} {r['cold_max_s']:8.2f} {r['warm_s']:8.2f} {r['cold_over_budget']:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
