"""Headless Chromium screenshots of every dashboard page, each checked for a Streamlit exception.

Starts ``nucleograph dashboard`` on a free port (against the Neo4j that the environment names),
drives Debian's ``chromium`` (``apt-get install -y chromium``) over the DevTools protocol, waits
until the page has finished running, saves ``<out>/<page>.png`` and reads the page's DOM for
Streamlit's exception box (``data-testid="stException"``). The Cypher page is shot twice: as
opened, and after clicking Run on its first library query (results drawn over the image); so is the
Image explorer: as opened, and after a real mouse click (``Input.dispatchMouseEvent``) on a nucleus
of its chart, the path a user takes to inspect one; and the Slide viewer, switched to Click mode, after a
click on its whole-slide view (a bin: the view zooms in about it). With ``--explorer-scaling TEXT`` the
explorer is shot once more after picking that Score scaling with real clicks on the selectbox. With
``--explanation TEXT`` the explorer and the slide viewer first pick that explanation the same way.

    NUCLEOGRAPH_HOME=/tmp/dashbench NEO4J_URI=bolt://127.0.0.1:7690 \\
        .venv/bin/python bench/screenshot_dashboard.py --cohort bench --out /tmp/nucleograph-screenshots

Exits 1 when any page shows an exception, or the click on a nucleus opens no nucleus panel.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

PAGES = ("cohorts", "explorer", "patterns", "models", "cypher", "slides")
URL_PATH = {"cohorts": ""}
EXPLANATION_PICKER = {"explorer": "Importance (run · model · method)", "slides": "Heat map (run · model · method)"}  # the default page lives at "/"; its url_path is not a route
# Streamlit marks a running script on <div data-testid="stStatusWidget">; the app is idle when the
# app view exists and no status widget shows "Running".
_STATE_JS = """(() => {
  const app = document.querySelector('[data-testid="stApp"]');
  const running = !!document.querySelector('[data-testid="stStatusWidget"] [data-testid="stStatusWidgetRunningIcon"]')
      || /Running/.test((document.querySelector('[data-testid="stStatusWidget"]') || {}).innerText || '');
  const skeleton = !!document.querySelector('[data-testid="stSkeleton"], [data-testid="stAppSkeleton"]');
  const main = document.querySelector('[data-testid="stMain"], section.main');
  return JSON.stringify({
    app: !!app, running, skeleton,
    text: main ? main.innerText.length : 0,
    exceptions: [...document.querySelectorAll('[data-testid="stException"]')].map(e => e.innerText.slice(0, 500)),
    errors: [...document.querySelectorAll('[data-testid="stAlertContentError"]')].map(e => e.innerText.slice(0, 300)),
    plots: document.querySelectorAll('.js-plotly-plot').length,
  });
})()"""


# Where the chart draws a nucleus, in viewport pixels: Plotly's own axis mapping (l2p) plus the plot
# area's offset inside the chart's div. Picks the nucleus nearest the plot's centre, away from edges
# and the colour bar.
_NUCLEUS_JS = """(() => {
  const gd = [...document.querySelectorAll('.js-plotly-plot')].find(g => (g.data || []).some(t => t.name === 'nuclei'));
  if (!gd) return null;
  gd.scrollIntoView({block: 'center'});
  const t = gd._fullData.findIndex(t => t.name === 'nuclei');
  const xs = Array.from(gd._fullData[t].x), ys = Array.from(gd._fullData[t].y);
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, r = gd.getBoundingClientRect();
  const px = i => [r.left + xa._offset + xa.l2p(xs[i]), r.top + ya._offset + ya.l2p(ys[i])];
  const cx = r.left + xa._offset + xa._length / 2, cy = r.top + ya._offset + ya._length / 2;
  let best = -1, bd = Infinity;
  xs.forEach((_, i) => { const [x, y] = px(i); const d = (x - cx) ** 2 + (y - cy) ** 2; if (d < bd) { bd = d; best = i; } });
  const [x, y] = px(best);
  return JSON.stringify({index: best, x, y});
})()"""


# The plot area of the page's main chart (not the sidebar's) in viewport pixels: left, top, width, height.
_MAIN_PLOT_JS = """(() => {
  const gd = document.querySelector('[data-testid="stMain"] .js-plotly-plot');
  gd.scrollIntoView({block: 'center'});
  const r = gd.getBoundingClientRect(), xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  return JSON.stringify([r.left + xa._offset, r.top + ya._offset, xa._length, ya._length]);
})()"""
# The centre of a selectbox (by its label) or of an open list's option (by the start of its text), in
# viewport pixels.
_SELECTBOX_JS = """(label => {
  const w = [...document.querySelectorAll('[data-testid="stSelectbox"]')].find(e => e.innerText.startsWith(label));
  if (!w) return null;
  const s = w.querySelector('[role="combobox"], [data-baseweb="select"]');  // react-aria's, else BaseWeb's
  s.scrollIntoView({block: 'center'});
  const r = s.getBoundingClientRect();
  return JSON.stringify([r.left + r.width / 2, r.top + r.height / 2]);
})"""
_OPTION_JS = """(text => {
  const o = [...document.querySelectorAll('[role="option"]')].find(e => e.innerText.trim().startsWith(text));
  if (!o) return null;
  const r = o.getBoundingClientRect();
  return JSON.stringify([r.left + r.width / 2, r.top + r.height / 2]);
})"""
_SLIDE_CAPTION_JS = """[...document.querySelectorAll('[data-testid="stCaptionContainer"]')].map(c => c.innerText)
  .find(c => c.startsWith('view x'))"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"nothing answered at {url} within {timeout:.0f} s")


class Tab:
    """A minimal DevTools-protocol client for one browser tab."""

    def __init__(self, ws_url: str):
        self.ws = connect(ws_url, max_size=None, open_timeout=20).__enter__()
        self.next_id = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, js: str):
        return self.call("Runtime.evaluate", expression=js, returnByValue=True)["result"].get("value")

    def state(self) -> dict:
        return json.loads(self.eval(_STATE_JS))

    def settle(self, timeout: float = 60.0, quiet: float = 1.5) -> tuple[dict, float]:
        """Wait until the script has run and the page stopped changing; return its state and seconds."""
        t0 = time.monotonic()
        last, since = None, time.monotonic()
        while time.monotonic() - t0 < timeout:
            s = self.state()
            key = (s["text"], s["plots"], s["running"], s["skeleton"])
            if key != last:
                last, since = key, time.monotonic()
            elif s["app"] and not s["running"] and not s["skeleton"] and s["text"] > 0 and time.monotonic() - since >= quiet:
                return s, since - t0
            time.sleep(0.25)
        return self.state(), time.monotonic() - t0

    def click(self, x: float, y: float) -> None:
        """A real left click at viewport pixel (x, y): move, press, release, as a mouse sends them."""
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        time.sleep(0.3)  # Plotly picks the hovered point on mousemove; the click selects it
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", buttons=1, clickCount=1)

    def click_nucleus(self) -> dict | None:
        """Click the nucleus nearest the centre of the explorer's chart; its index and position, or None."""
        found = self.eval(_NUCLEUS_JS)
        if not found:
            return None
        time.sleep(0.5)  # scrollIntoView
        target = json.loads(self.eval(_NUCLEUS_JS))
        self.click(target["x"], target["y"])
        return target

    def choose(self, label: str, option: str) -> bool:
        """Open the selectbox labelled ``label`` and pick the option whose text starts with ``option``,
        with real mouse clicks (as a user does); False when either is not on the page."""
        box = self.eval(f"{_SELECTBOX_JS}({json.dumps(label)})")
        if not box:
            return False
        time.sleep(0.5)  # scrollIntoView
        self.click(*json.loads(self.eval(f"{_SELECTBOX_JS}({json.dumps(label)})")))
        time.sleep(0.5)  # the list opens
        found = self.eval(f"{_OPTION_JS}({json.dumps(option)})")
        if not found:  # a long list draws only its first options: type to filter it, as a user does
            self.call("Input.insertText", text=option)
            time.sleep(0.8)
            found = self.eval(f"{_OPTION_JS}({json.dumps(option)})")
        if not found:
            return False
        self.click(*json.loads(found))
        return True

    def screenshot(self, path: Path) -> None:
        height = self.eval("Math.max(document.body.scrollHeight, "
                           "(document.querySelector('[data-testid=\"stMain\"]') || document.body).scrollHeight)")
        height = int(min(max(height or 1200, 900), 4000))
        self.call("Emulation.setDeviceMetricsOverride", width=1600, height=height, deviceScaleFactor=1, mobile=False)
        time.sleep(0.8)  # let Plotly re-layout for the new viewport
        # The viewport already holds the whole page; captureBeyondViewport would resize it once more
        # during the capture, and Streamlit's sidebar starts sliding on that resize (shots then caught
        # it half-way, differing from run to run although the page had not changed).
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        path.write_bytes(base64.b64decode(data))
        self.call("Emulation.setDeviceMetricsOverride", width=1600, height=1200, deviceScaleFactor=1, mobile=False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cohort", default=None, help="cohort to select (default: the first)")
    p.add_argument("--image", default=None, help="image id the explorer opens on (default: its first)")
    p.add_argument("--out", default="/tmp/nucleograph-screenshots")
    p.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser") or "chromium")
    p.add_argument("--pages", default=",".join(PAGES), help="comma-separated subset of " + ", ".join(PAGES))
    p.add_argument("--explorer-scaling", default=None, metavar="TEXT",
                   help="also shoot the explorer after picking this Score scaling (the start of its label, "
                        "e.g. 'rank in the image')")
    p.add_argument("--explanation", default=None, metavar="TEXT",
                   help="on the explorer and the slide viewer, first pick the explanation whose label starts "
                        "with TEXT (e.g. 'r1a2b3c4d5e · rsf-edge · local'), with real clicks")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    port, cdp_port = _free_port(), _free_port()
    app = subprocess.Popen([sys.executable, "-m", "nucleograph.cli", "dashboard", "--port", str(port)],
                           env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    profile = tempfile.mkdtemp(prefix="nucleograph-chromium-")
    browser = None
    results = []
    try:
        _wait_http(f"http://127.0.0.1:{port}/_stcore/health", 90)
        browser = subprocess.Popen(
            [args.chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--window-size=1600,1200", f"--remote-debugging-port={cdp_port}", f"--user-data-dir={profile}",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_http(f"http://127.0.0.1:{cdp_port}/json/version", 30)
        with urllib.request.urlopen(f"http://127.0.0.1:{cdp_port}/json/list", timeout=5) as r:
            target = next(t for t in json.loads(r.read()) if t["type"] == "page")
        tab = Tab(target["webSocketDebuggerUrl"])
        tab.call("Page.enable")
        tab.call("Runtime.enable")
        query = "?" + urllib.parse.urlencode({k: v for k, v in (("cohort", args.cohort), ("image", args.image)) if v})
        for page in [x.strip() for x in args.pages.split(",") if x.strip()]:
            tab.call("Page.navigate", url=f"http://127.0.0.1:{port}/{URL_PATH.get(page, page)}{query}")
            state, seconds = tab.settle()
            if args.explanation and page in EXPLANATION_PICKER:
                state["explanation"] = tab.choose(EXPLANATION_PICKER[page], args.explanation)
                time.sleep(1.0)
                state, seconds = {**tab.settle()[0], "chosen": state["explanation"]}, seconds
            path = out / f"{page}.png"
            tab.screenshot(path)
            results.append({"page": page, "png": str(path), "seconds": round(seconds, 2), **state})
            if page == "explorer":
                target = tab.click_nucleus()
                time.sleep(1.0)  # the rerun starts after the selection event reaches the server
                state, seconds = tab.settle()
                state["nucleus_panel"] = tab.eval(
                    "[...document.querySelectorAll('[data-testid=\"stMetricLabel\"]')].map(e => e.innerText)"
                    ".includes('degree')")
                path = out / "explorer-click.png"
                tab.screenshot(path)
                results.append({"page": "explorer (after click)", "png": str(path), "seconds": round(seconds, 2),
                                "clicked": target, **state})
                if args.explorer_scaling:
                    chosen = tab.choose("Score scaling", args.explorer_scaling)
                    time.sleep(1.0)
                    state, seconds = tab.settle()
                    state["chosen"] = chosen
                    path = out / "explorer-scaling.png"
                    tab.screenshot(path)
                    results.append({"page": "explorer (scaling)", "png": str(path), "seconds": round(seconds, 2),
                                    **state})
            if page == "slides" and state["plots"]:
                # Click mode, then a click in the middle of the whole slide's view: on a bin, which zooms in
                # about it, or (a slide with few nuclei shows them one by one) on a nucleus, which opens it
                tab.eval("[...document.querySelectorAll('button')].find(b => b.innerText.trim().endsWith('Click')).click()")
                tab.settle()
                area = json.loads(tab.eval(_MAIN_PLOT_JS))
                tab.click(area[0] + area[2] / 2, area[1] + area[3] / 2)
                time.sleep(1.0)
                state, seconds = tab.settle()
                state["zoomed"] = "zoom 2×" in (tab.eval(_SLIDE_CAPTION_JS) or "") or tab.eval(
                    "[...document.querySelectorAll('[data-testid=\"stMain\"] h3')].some(h => /^Nucleus/.test(h.innerText))")
                path = out / "slides-click.png"
                tab.screenshot(path)
                results.append({"page": "slides (after a click)", "png": str(path), "seconds": round(seconds, 2),
                                **state})
            if page == "cypher":
                tab.eval("[...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Run').click()")
                state, seconds = tab.settle()
                path = out / "cypher-run.png"
                tab.screenshot(path)
                results.append({"page": "cypher (after Run)", "png": str(path), "seconds": round(seconds, 2), **state})
        tab.ws.close()
    finally:
        if browser is not None:
            browser.terminate()
            browser.wait(timeout=20)
        app.terminate()
        app.wait(timeout=20)
        shutil.rmtree(profile, ignore_errors=True)

    bad = [r for r in results if r["exceptions"] or r.get("nucleus_panel") is False or r.get("zoomed") is False
           or r.get("chosen") is False]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            flag = ("EXCEPTION" if r["exceptions"] else "error box" if r["errors"] else
                    "no nucleus" if r.get("nucleus_panel") is False else "no effect" if r.get("zoomed") is False
                    else "not chosen" if r.get("chosen") is False else "ok")
            print(f"{r['page']:20s} {flag:10s} {r['plots']} plot(s)  settled {r['seconds']:5.1f} s  {r['png']}")
            for e in r["exceptions"] + r["errors"]:
                print(f"    {e.splitlines()[0] if e else e}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
