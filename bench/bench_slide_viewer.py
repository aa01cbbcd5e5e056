"""Viewing slides (issue 15 item 5): the Slide viewer's redraw time per pan or zoom, in headless Chromium.

The slide is the real segmentation shipped in the ``histolytics`` wheel (``hgsc_nuclei_wsi.parquet``: 592k
nucleus polygons over 47,001 x 66,210 px; ``bench_slide_store.slide_graph``: the product's importer,
morphology features, 100 px edges). It ships no pixels, so this script paints a pyramidal JPEG TIFF of
the same size from the polygons (pink stroma where nuclei are, glass elsewhere, every polygon filled in
haematoxylin purple; 512-px tiles, four levels, each level painted from the polygons at its own scale):
the viewer reads it as it reads any slide, through tiffslide. The nuclei (and edges) are stored in a
throw-away Neo4j at the default heap and page cache (1g / 512m) with ``db.store.store_image_graph``, and
a run's scores written with ``db.runs.save_scores``. The scores are SYNTHETIC (a smooth field over the
slide times the nucleus's size rank): they exercise the heat map, they explain nothing.

Then ``nucleograph dashboard`` runs against that server and Debian's ``chromium`` (headless, DevTools
protocol) opens the Slide viewer, as a user would: clicks on the zoom and pan buttons, boxes dragged on the
chart (``Input.dispatchMouseEvent``: press, moves, release). For each interaction the time
from the event that asks for the new view (a button's or a point's press, a box's release) to the redrawn
view (the caption names the new view, the chart's axes span it, and the app has stopped running) is
measured, also from the first input of the interaction (``from_first_input``: the drawing of a box, the
hover before a click), and the bytes the browser received over Streamlit's websocket in that time
(``Network.webSocketFrameReceived``). Prints p50/p95/max per kind of view (binned, nuclei one by
one) and saves screenshots of a zoomed-out and a zoomed-in view.

    ./.venv/bin/python bench/bench_slide_viewer.py [--nuclei 50000] [--work /tmp/viewer] \\
        [--shots docs/img] [--json]

``--work`` keeps the painted TIFF between runs (painting the whole slide takes a few minutes).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import shapely
import tifffile
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_slide_store import GEOMETRIC, slide_file, slide_graph  # noqa: E402
from screenshot_dashboard import Tab, _free_port, _wait_http  # noqa: E402

from nucleograph.db import local, schema, store  # noqa: E402
from nucleograph.db import runs as db_runs  # noqa: E402
from nucleograph.db.graphdb import GraphDB  # noqa: E402
from nucleograph.ingest.cohort import ImageRecord  # noqa: E402
from nucleograph.ingest.importers import read_nuclei  # noqa: E402
from nucleograph.ingest.synth.slide import slide_levels  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TILE = 512
MPP = 0.5
RUN_ID = "rb0b1e5e0"  # the bench's run
GLASS = np.array([244, 242, 246], np.uint8)
STROMA = np.array([236, 178, 206], np.float32)
NUCLEUS, RIM = (96, 52, 146), (58, 28, 104)


# --- the painted slide --------------------------------------------------------------------------------
def polygons(path: Path):
    """Exterior rings of all the slide's polygons: flat (x, y) coordinates, each ring's start, bounds."""
    parsed = read_nuclei(path, "geoparquet")
    geoms = np.asarray(parsed.geometries, dtype=object)
    rings = shapely.get_exterior_ring(geoms)
    coords, index = shapely.get_coordinates(rings, return_index=True)
    starts = np.searchsorted(index, np.arange(len(geoms) + 1))
    bounds = shapely.bounds(geoms)
    return coords, starts, bounds


def paint(out: Path, width: int, height: int, coords, starts, bounds, centroids) -> None:
    """Write the pyramidal TIFF, every level painted from the polygons at its own scale, strip by strip."""
    cell = 256
    counts = np.zeros((-(-height // cell), -(-width // cell)), np.int32)
    np.add.at(counts, ((centroids[:, 1] // cell).astype(int).clip(0, counts.shape[0] - 1),
                       (centroids[:, 0] // cell).astype(int).clip(0, counts.shape[1] - 1)), 1)
    tissue = counts >= 2
    grown = tissue.copy()  # one cell of stroma around the nuclei
    grown[1:] |= tissue[:-1]
    grown[:-1] |= tissue[1:]
    grown[:, 1:] |= tissue[:, :-1]
    grown[:, :-1] |= tissue[:, 1:]
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1, (TILE + 8, TILE + 8)).astype(np.float32)
    noise = sum(np.roll(np.roll(noise, i, 0), j, 1) for i in range(-2, 3) for j in range(-2, 3))[4:-4, 4:-4] / 5
    order = np.argsort(bounds[:, 1])
    ymin = bounds[order, 1]
    tallest = float((bounds[:, 3] - bounds[:, 1]).max()) if len(bounds) else 0.0
    shade = rng.uniform(0.8, 1.15, len(bounds))
    levels = slide_levels(width, height)
    options = {"photometric": "rgb", "tile": (TILE, TILE), "compression": "jpeg", "compressionargs": {"level": 85},
               "resolutionunit": "CENTIMETER", "metadata": None}

    def tiles(level: int):
        lw, lh = levels[level]
        down = width / lw
        cols = (np.arange(lw) * down // cell).astype(int).clip(0, grown.shape[1] - 1)
        tex = np.tile(noise, (1, -(-lw // TILE)))[:, :lw]
        for y0 in range(0, lh, TILE):
            h = min(TILE, lh - y0)
            rows = (np.arange(y0, y0 + h) * down // cell).astype(int).clip(0, grown.shape[0] - 1)
            mask = grown[rows][:, cols]
            strip = np.broadcast_to(GLASS, (h, lw, 3)).copy()
            pink = np.clip(STROMA[None, None, :] + tex[:h, :, None] * np.array([6, 10, 6], np.float32), 0, 255)
            strip[mask] = pink[mask].astype(np.uint8)
            im = Image.fromarray(strip)
            draw = ImageDraw.Draw(im)
            lo, hi = np.searchsorted(ymin, [y0 * down - tallest, (y0 + h) * down])
            for k in order[lo:hi]:
                ring = (coords[starts[k]:starts[k + 1]] / down - (0, y0)).ravel().tolist()
                if len(ring) >= 6:
                    fill = tuple(int(c * shade[k]) for c in NUCLEUS)
                    draw.polygon(ring, fill=fill, outline=RIM if down < 2 else None)
            strip = np.asarray(im)
            for x0 in range(0, lw, TILE):
                tile = np.full((TILE, TILE, 3), 255, np.uint8)
                part = strip[:, x0:x0 + TILE]
                tile[:part.shape[0], :part.shape[1]] = part
                yield tile

    part = out.with_name(out.name + ".part")
    with tifffile.TiffWriter(part, bigtiff=True) as tw:
        tw.write(tiles(0), shape=(height, width, 3), dtype=np.uint8, subifds=len(levels) - 1,
                 resolution=(1e4 / MPP, 1e4 / MPP), description="nucleograph bench: painted HGSC slide", **options)
        for level in range(1, len(levels)):
            lw, lh = levels[level]
            mpp = MPP * width / lw
            tw.write(tiles(level), shape=(lh, lw, 3), dtype=np.uint8, subfiletype=1,
                     resolution=(1e4 / mpp, 1e4 / mpp), **options)
    part.replace(out)


# --- the browser --------------------------------------------------------------------------------------
class Browser(Tab):
    """The DevTools tab, also counting the bytes of websocket frames received (Streamlit's deltas)."""

    def __init__(self, ws_url: str):
        super().__init__(ws_url)
        self.received = 0

    def call(self, method: str, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("method") == "Network.webSocketFrameReceived":
                data = msg["params"]["response"].get("payloadData", "")
                # binary frames (protobuf) come base64-encoded: count the bytes on the wire
                self.received += len(data) * 3 // 4 if msg["params"]["response"].get("opcode") == 2 else len(data)
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})


_VIEW_JS = """(() => {
  const caps = [...document.querySelectorAll('[data-testid="stCaptionContainer"]')].map(c => c.innerText);
  const cap = caps.find(c => c.startsWith('view x')) || '';
  const gd = document.querySelector('[data-testid="stMain"] .js-plotly-plot');  // not the sidebar's navigator
  const nav = document.querySelector('[data-testid="stSidebar"] .js-plotly-plot');
  const xr = gd && gd._fullLayout ? gd._fullLayout.xaxis.range : null;
  const names = gd && gd.data ? gd.data.map(t => t.name) : [];
  const running = /Running/.test((document.querySelector('[data-testid="stStatusWidget"]') || {}).innerText || '')
      || !!document.querySelector('[data-testid="stStatusWidgetRunningIcon"]');
  const area = (g) => { if (!g || !g._fullLayout) return null; const b = g.getBoundingClientRect(), a = g._fullLayout.xaxis,
    o = g._fullLayout.yaxis; return [b.left + a._offset, b.top + o._offset, a._length, o._length]; };
  const picked = [...document.querySelectorAll('[data-testid="stMain"] h3')].map(h => h.innerText)
      .find(t => t.startsWith('Nucleus')) || null;
  return JSON.stringify({cap, xr, names, running, plot: area(gd), nav: area(nav), picked,
    exceptions: document.querySelectorAll('[data-testid="stException"]').length});
})()"""

_HOOK_JS = """(() => { try { const gd = document.querySelector('[data-testid="stMain"] .js-plotly-plot'); window._ev = [];
  ['plotly_selected', 'plotly_click', 'plotly_selecting', 'plotly_relayout'].forEach(n => gd.on(n, e => window._ev.push(
    [n, e && e.range ? JSON.stringify(e.range) : '', e && e.points ? e.points.length : -1]))); return 'ok'; }
    catch (err) { return String(err); } })()"""
_DIAG_JS = """(() => { try { const gd = document.querySelector('[data-testid="stMain"] .js-plotly-plot');
  return JSON.stringify({ev: window._ev, drag: gd._fullLayout.dragmode, n: document.querySelectorAll('.js-plotly-plot').length,
    el: document.elementFromPoint(window._pt[0], window._pt[1]).getAttribute('class')}); }
  catch (err) { return String(err) + ' | ' + (document.querySelector('[data-testid="stMain"]') || document.body).innerText.slice(0, 1500); } })()"""
# The nucleus of the main chart nearest a fraction (fx, fy) of its plot area, in viewport pixels (Plotly's
# own axis mapping), or null when no nuclei are drawn.
_NUCLEUS_AT_JS = """((fx, fy) => {
  const gd = document.querySelector('[data-testid="stMain"] .js-plotly-plot');
  const t = gd && gd._fullData ? gd._fullData.findIndex(t => t.name === 'nuclei') : -1;
  if (t < 0) return null;
  const xs = Array.from(gd._fullData[t].x), ys = Array.from(gd._fullData[t].y);
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis, r = gd.getBoundingClientRect();
  const px = i => [r.left + xa._offset + xa.l2p(xs[i]), r.top + ya._offset + ya.l2p(ys[i])];
  const tx = r.left + xa._offset + fx * xa._length, ty = r.top + ya._offset + fy * ya._length;
  let best = -1, bd = Infinity;
  xs.forEach((_, i) => { const [x, y] = px(i); const d = (x - tx) ** 2 + (y - ty) ** 2; if (d < bd) { bd = d; best = i; } });
  return best < 0 ? null : JSON.stringify(px(best));
})(%s, %s)"""
_BUTTON_JS = """((label) => {
  const b = [...document.querySelectorAll('button')].find(b => b.innerText.trim().endsWith(label));
  if (!b) return null;
  const r = b.getBoundingClientRect();
  return JSON.stringify([r.left + r.width / 2, r.top + r.height / 2]);
})(%s)"""


def view_state(tab: Browser) -> dict:
    return json.loads(tab.eval(_VIEW_JS))


def wait_redrawn(tab: Browser, before: str, t0: float, timeout: float = 60.0) -> tuple[float, dict]:
    """Poll until the caption names a new view, the axes span it and the app is idle; seconds since t0."""
    while time.perf_counter() - t0 < timeout:
        s = view_state(tab)
        if s["exceptions"]:
            raise RuntimeError(f"the page shows an exception: {tab.eval(_DIAG_JS)}")
        if s["cap"] and s["cap"] != before and not s["running"] and s["xr"]:
            x0 = float(s["cap"].split("view x ")[1].split("–")[0].replace(",", ""))
            if abs(s["xr"][0] - x0) <= 1.0:
                return time.perf_counter() - t0, s
        time.sleep(0.01)
    raise TimeoutError(f"the view did not change within {timeout:.0f} s after an interaction ({before!r})")


# Each interaction returns when (perf_counter) it asked for the new view: a button's or a point's press, a
# box's release (the app can answer a box only once it is drawn; how long the hand takes to draw it is the user's).
def press(tab: Browser, label: str) -> float:
    found = tab.eval(_BUTTON_JS % json.dumps(label))
    if not found:
        raise RuntimeError(f"no button {label!r} on the page")
    x, y = json.loads(found)
    tab.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
    asked = time.perf_counter()
    for kind in ("mousePressed", "mouseReleased"):
        tab.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", buttons=1, clickCount=1)
    return asked


def drag(tab: Browser, plot, fx0: float, fy0: float, fx1: float, fy1: float) -> float:
    """A box dragged on the chart from one fraction of the plot area to another."""
    left, top, w, h = plot
    x0, y0, x1, y1 = left + fx0 * w, top + fy0 * h, left + fx1 * w, top + fy1 * h
    tab.eval(f"window._pt = [{x0}, {y0}]")
    tab.call("Input.dispatchMouseEvent", type="mouseMoved", x=x0, y=y0)
    tab.call("Input.dispatchMouseEvent", type="mousePressed", x=x0, y=y0, button="left", buttons=1, clickCount=1)
    for i in range(1, 9):
        tab.call("Input.dispatchMouseEvent", type="mouseMoved", x=x0 + (x1 - x0) * i / 8, y=y0 + (y1 - y0) * i / 8,
                 button="left", buttons=1)
        time.sleep(0.01)
    asked = time.perf_counter()
    tab.call("Input.dispatchMouseEvent", type="mouseReleased", x=x1, y=y1, button="left", buttons=1, clickCount=1)
    return asked


def click(tab: Browser, plot, fx: float, fy: float) -> float:
    left, top, w, h = plot
    x, y = left + fx * w, top + fy * h
    tab.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
    time.sleep(0.15)  # Plotly picks the hovered point on mousemove
    asked = time.perf_counter()
    for kind in ("mousePressed", "mouseReleased"):
        tab.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", buttons=1, clickCount=1)
    return asked


def click_nucleus(tab: Browser, fx: float, fy: float) -> float:
    """A click on the drawn nucleus nearest a fraction (fx, fy) of the main chart's plot area."""
    found = tab.eval(_NUCLEUS_AT_JS % (fx, fy))
    if not found:
        raise RuntimeError("no nuclei drawn to click")
    x, y = json.loads(found)
    return click(tab, (x, y, 0.0, 0.0), 0.0, 0.0)


# What a user does: from the whole slide, box into tissue, zoom and pan through it down to single nuclei,
# pan there, click a bin, a nucleus and the navigator, and back out.
# ("button", "Click") and ("button", "Box") switch the mouse between clicking points and dragging boxes.
SCRIPT = [
    ("drag", (0.35, 0.30, 0.65, 0.55)), ("button", "Zoom in"), ("button", "Right"), ("button", "Down"),
    ("button", "Click"), ("click", (0.40, 0.45)), ("button", "Left"), ("button", "Zoom in"), ("button", "Right"),
    ("button", "Down"), ("button", "Left"), ("button", "Zoom in"), ("nucleus", (0.3, 0.4)), ("button", "Up"),
    ("button", "Left"), ("nav", (0.3, 0.6)), ("button", "Box"), ("drag", (0.2, 0.2, 0.6, 0.6)),
    ("button", "Zoom out"), ("button", "Down"),
    ("button", "Zoom out"), ("button", "Zoom out"), ("button", "Left"), ("button", "Zoom out"), ("button", "Up"),
    ("nav", (0.6, 0.3)), ("button", "Zoom in"), ("button", "Whole slide"),
]
# The same walk by buttons and boxes only (what the viewer offered before Click mode and the navigator):
# `--script buttons` measures it on code without them, for a side-by-side comparison.
BUTTONS_SCRIPT = [step for step in SCRIPT if step[0] in ("button", "drag") and step[1] not in ("Click", "Box")]


def browse(env: dict, cohort: str, image_id: str, shots: Path | None, chromium: str, script: list = SCRIPT) -> dict:
    port, cdp_port = _free_port(), _free_port()
    app = subprocess.Popen([sys.executable, "-m", "nucleograph.cli", "dashboard", "--port", str(port)],
                           env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    profile = tempfile.mkdtemp(prefix="nucleograph-chromium-")
    browser = None
    try:
        _wait_http(f"http://127.0.0.1:{port}/_stcore/health", 90)
        browser = subprocess.Popen(
            [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--window-size=1600,1100", f"--remote-debugging-port={cdp_port}", f"--user-data-dir={profile}",
             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_http(f"http://127.0.0.1:{cdp_port}/json/version", 30)
        with urllib.request.urlopen(f"http://127.0.0.1:{cdp_port}/json/list", timeout=5) as r:
            target = next(t for t in json.loads(r.read()) if t["type"] == "page")
        tab = Browser(target["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Network"):
            tab.call(f"{domain}.enable")
        tab.call("Emulation.setDeviceMetricsOverride", width=1600, height=1100, deviceScaleFactor=1, mobile=False)
        query = urllib.parse.urlencode({"cohort": cohort, "image": image_id})
        t0 = time.perf_counter()
        tab.call("Page.navigate", url=f"http://127.0.0.1:{port}/slides?{query}")
        first, state = wait_redrawn(tab, "", t0, timeout=300)
        tab.settle(timeout=30, quiet=1.0)
        state = view_state(tab)
        if shots:
            shot(tab, shots / "slide_viewer_whole.png")
        steps = []
        for kind, arg in script:
            # a user acts on a finished page: the sidebar's navigator is redrawn after the view's caption
            tab.settle(timeout=30, quiet=0.5)
            state = view_state(tab)
            tab.eval(_HOOK_JS)
            before, tab.received = state["cap"], 0
            t0 = time.perf_counter()
            if kind == "button":
                asked = press(tab, arg)
            elif kind == "drag":
                asked = drag(tab, state["plot"], *arg)
            elif kind == "nucleus":
                asked = click_nucleus(tab, *arg)
            elif kind == "nav":
                asked = click(tab, state["nav"], *arg)
            else:
                asked = click(tab, state["plot"], *arg)
            try:
                since_t0, after = wait_redrawn(tab, before, t0)
            except TimeoutError:
                print(tab.eval(_DIAG_JS), file=sys.stderr)
                raise
            mode = "nuclei" if "nuclei" in after["names"] else "bins"
            # from the event that asked for the view; `from_first_input` also counts the hover before a click
            # (the bench's 150 ms pause) and the drawing of a box
            seconds = since_t0 - (asked - t0)
            server = after["cap"].split("read and drawn in ")[1].split(" ms")[0] if "drawn in" in after["cap"] else "nan"
            steps.append({"action": kind, "arg": arg, "seconds": round(seconds, 3),
                          "from_first_input": round(since_t0, 3), "bytes": tab.received,
                          "server_ms": float(server), "picked": after["picked"],
                          "mode": mode, "view": after["cap"].split(" · ")[0], "exceptions": after["exceptions"]})
            print(f"  {kind:6s} {arg!s:26s} {seconds * 1000:6.0f} ms ({since_t0 * 1000:5.0f}) "
                  f"{tab.received / 1024:7.0f} KiB  {mode:6s} "
                  f"{after['cap']}", file=sys.stderr)
            if kind == "nucleus":  # the panel comes after the view's caption: wait for the page to settle
                tab.settle(timeout=30, quiet=1.0)
                steps[-1]["picked"] = view_state(tab)["picked"]
                if not steps[-1]["picked"]:
                    raise RuntimeError(f"a click on a nucleus opened no nucleus panel: {tab.eval(_DIAG_JS)}")
                if shots:
                    shot(tab, shots / "slide_viewer_nucleus.png", height=1700)  # the panel is below the chart
            if shots and mode == "nuclei" and not (shots / "slide_viewer_nuclei.png").exists():
                shot(tab, shots / "slide_viewer_nuclei.png")
            if shots and mode == "bins" and 3 <= len(steps) and not (shots / "slide_viewer_tissue.png").exists():
                shot(tab, shots / "slide_viewer_tissue.png")
        return {"first_view_s": round(first, 2), "steps": steps}
    finally:
        if browser is not None:
            browser.terminate()
            browser.wait(10)
        app.terminate()
        app.wait(20)
        shutil.rmtree(profile, ignore_errors=True)


def shot(tab: Browser, path: Path, height: int = 1100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if height != 1100:
        tab.call("Emulation.setDeviceMetricsOverride", width=1600, height=height, deviceScaleFactor=1, mobile=False)
        time.sleep(0.8)  # Plotly re-lays out for the new viewport
    data = tab.call("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
    path.write_bytes(base64.b64decode(data))
    if height != 1100:
        tab.call("Emulation.setDeviceMetricsOverride", width=1600, height=1100, deviceScaleFactor=1, mobile=False)
        time.sleep(0.8)


def summary(steps: list[dict]) -> dict:
    out = {}
    for mode in ("all", "bins", "nuclei"):
        sel = [s for s in steps if mode == "all" or s["mode"] == mode]
        if sel:
            t = np.array([s["seconds"] for s in sel])
            first = np.array([s.get("from_first_input", s["seconds"]) for s in sel])
            b = np.array([s["bytes"] for s in sel])
            server = np.array([s["server_ms"] for s in sel])
            out[mode] = {"n": len(sel), "p50_ms": round(float(np.percentile(t, 50)) * 1000),
                         "server_p50_ms": round(float(np.nanpercentile(server, 50))),
                         "server_p95_ms": round(float(np.nanpercentile(server, 95))),
                         "p95_ms": round(float(np.percentile(t, 95)) * 1000), "max_ms": round(float(t.max()) * 1000),
                         "from_first_input_p50_ms": round(float(np.percentile(first, 50)) * 1000),
                         "from_first_input_p95_ms": round(float(np.percentile(first, 95)) * 1000),
                         "median_kib": round(float(np.median(b)) / 1024), "max_kib": round(float(b.max()) / 1024)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nuclei", type=int, default=None, help="the N nuclei nearest the centre (default: all)")
    ap.add_argument("--work", default="/tmp/nucleograph-viewer", help="folder for the painted slide (kept)")
    ap.add_argument("--shots", default=None, help="folder for the screenshots")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    ap.add_argument("--script", choices=("full", "buttons"), default="full",
                    help="the interactions: all of them, or buttons and boxes only (works on older code too)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    say = (lambda *a: None) if args.json else (lambda *a: print(*a, file=sys.stderr))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    src = slide_file()
    t = time.perf_counter()
    graph, params, _ = slide_graph(src, args.nuclei)
    say(f"{graph.n_nuclei:,} nuclei, {graph.n_edges:,} edges over {graph.width}x{graph.height} px "
        f"({time.perf_counter() - t:.0f} s)")
    tif = work / "hgsc_painted.tif"  # all the slide's polygons, also when fewer nuclei are stored
    centroids = np.stack([graph.nuclei["centroid_x"], graph.nuclei["centroid_y"]], 1)
    if not tif.exists():
        t = time.perf_counter()
        coords, starts, bounds = polygons(src)
        centres = np.stack([(bounds[:, 0] + bounds[:, 2]) / 2, (bounds[:, 1] + bounds[:, 3]) / 2], 1)
        paint(tif, graph.width, graph.height, coords, starts, bounds, centres)
        say(f"painted {tif} ({tif.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t:.0f} s")
        del coords, starts, bounds
    graph = dataclasses.replace(graph, record=ImageRecord(tif, "slide"))
    with local.temporary_server(launcher_from=ROOT / ".nucleograph" / "test" / "launcher", heap="1g",
                                pagecache="512m") as (settings, env), GraphDB.open(settings) as db:
        schema.migrate(db)
        t = time.perf_counter()
        store.store_image_graph(db, graph, cohort="viewer", params=params, feature_names=GEOMETRIC)
        t_store = time.perf_counter() - t
        seg = store.window_nuclei(db, "viewer", graph.image_id, 0, 0, 1, 1)["segmentation"]
        db_runs.save_run(db, run_id=RUN_ID, cohort="viewer", props={"model": "rsf", "status": "finished",
                                                                     "class_names": ["low", "high"]})
        area = graph.nuclei["area"].astype(float)
        rank = np.argsort(np.argsort(area)) / max(len(area) - 1, 1)
        field = np.sin(centroids[:, 0] / 4000.0) * np.cos(centroids[:, 1] / 5000.0)
        scores = field * (0.2 + rank)  # SYNTHETIC: a smooth field times the size rank
        nids = graph.nuclei["nucleus_id"]
        t = time.perf_counter()
        for lo in range(0, len(nids), 50_000):
            db_runs.save_scores(db, run_id=RUN_ID, method="attention", hops=None, segmentation=seg,
                                nids=nids[lo:lo + 50_000], scores=scores[lo:lo + 50_000])
        say(f"stored in {t_store:.0f} s, scores in {time.perf_counter() - t:.0f} s")
        result = browse(env, "viewer", graph.image_id, Path(args.shots) if args.shots else None, args.chromium,
                        SCRIPT if args.script == "full" else BUTTONS_SCRIPT)
    out = {"nuclei": graph.n_nuclei, "edges": graph.n_edges, "slide": [graph.width, graph.height],
           "store_s": round(t_store), "first_view_s": result["first_view_s"], "viewports": summary(result["steps"]),
           "steps": result["steps"]}
    print(json.dumps(out) if args.json else json.dumps({k: v for k, v in out.items() if k != "steps"}, indent=1))


if __name__ == "__main__":
    main()
