"""Opening a dashboard page in Streamlit's AppTest (imported by the dashboard tests)."""

from __future__ import annotations

from pathlib import Path

from streamlit.testing.v1 import AppTest

APP = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
PAGES = {
    "cohorts": "views/cohorts.py",
    "explorer": "views/explorer.py",
    "slides": "views/slides.py",
    "patterns": "views/patterns.py",
    "models": "views/models.py",
    "cypher": "views/cypher.py",
}


def open_page(page: str, cohort: str, **state) -> AppTest:
    """Run the app on ``page`` with ``cohort`` selected (and any other session state)."""
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state["cohort"] = cohort
    for key, value in state.items():
        at.session_state[key] = value
    at.run()
    if page != "cohorts":
        at.switch_page(PAGES[page]).run()
    return at


def assert_clean(at: AppTest) -> None:
    """No exception and no error box on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
