"""`nucleograph dashboard` serves the app; the pure helpers behind the pages."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest

from nucleograph.cli import build_parser
from nucleograph.dashboard import data
from nucleograph.dashboard.cli import streamlit_command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_command_defaults_to_localhost_headless():
    args = build_parser().parse_args(["dashboard"])
    assert (args.host, args.port) == ("127.0.0.1", 8501)
    cmd = streamlit_command(args.host, args.port)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("dashboard/app.py")
    assert cmd[cmd.index("--server.address") + 1] == "127.0.0.1"
    assert cmd[cmd.index("--server.headless") + 1] == "true"


@pytest.mark.neo4j
@pytest.mark.slow
def test_dashboard_command_serves_the_app(test_environ):
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "nucleograph.cli", "dashboard", "--port", str(port)],
        env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline, body = time.monotonic() + 60, ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
                    body = r.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        assert body == "ok", proc.stdout.read() if proc.poll() is not None else "no answer"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert r.status == 200 and b"<div id=\"root\">" in r.read()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        proc.stdout.close()


def test_nucleus_points_from_columns_and_from_nodes():
    cols = ["image_id", "nid", "x", "y"]
    rows = [{"image_id": "a", "nid": 1, "x": 1.0, "y": 2.0}, {"image_id": "a", "nid": 2, "x": None, "y": 3.0}]
    assert data.nucleus_points(cols, rows).to_dict("records") == [{"image_id": "a", "nid": 1, "x": 1.0, "y": 2.0}]
    node = {"_labels": ["Nucleus"], "image_id": "b", "nid": 7, "centroid_x": 5.0, "centroid_y": 6.0}
    other = {"_labels": ["Image"], "id": "b"}
    pts = data.nucleus_points(["n", "ms"], [{"n": node, "ms": [node, other]}])
    assert len(pts) == 2 and set(pts["nid"]) == {7}
    assert data.nucleus_points(["count"], [{"count": 3}]).empty


def _ranked(labels=("A", "B"), n=200, k_shift=2.0, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for label in labels:
        rank = np.arange(n)
        area = rng.normal(100, 10, n)
        area[:10] += k_shift * 10  # the top ten are bigger by k_shift SD
        frames.append(pd.DataFrame({"image_id": label + "1", "label": label, "total": n, "rank": rank,
                                    "nid": rank, "area": area, "sample": rank % 2 == 0}))
    return pd.concat(frames, ignore_index=True)


def test_effect_sizes_find_bigger_top_nuclei():
    eff = data.effect_sizes(_ranked(), 10, ["area"])
    assert set(eff["label"]) == {"A", "B"}
    assert (eff["d"] > 1.2).all() and (eff["n_top"] == 10).all() and (eff["n_all"] == 100).all()


def test_box_stats_are_quartiles_and_whiskers_inside_the_data():
    df = _ranked()
    stats = data.box_stats(data.top_vs_all(df, 10), "area", ["label", "group"])
    assert len(stats) == 4
    assert (stats["q1"] <= stats["median"]).all() and (stats["median"] <= stats["q3"]).all()
    assert (stats["lowerfence"] <= stats["q1"]).all() and (stats["upperfence"] >= stats["q3"]).all()


def test_topk_overlap_is_jaccard():
    a = pd.DataFrame({"image_id": "i", "label": "A", "rank": [0, 1, 2], "nid": [1, 2, 3]})
    b = pd.DataFrame({"image_id": "i", "label": "A", "rank": [0, 1, 2], "nid": [2, 3, 4]})
    assert data.topk_overlap(a, b, 2)["jaccard"].tolist() == [1 / 3]  # {1,2} vs {2,3}


def test_confusion_sums_fold_matrices_or_counts_predictions():
    run = {"class_names": ["X", "Y"], "metrics": {"folds": [{"confusion_matrix": [[1, 0], [1, 1]]},
                                                            {"confusion_matrix": [[2, 0], [0, 1]]}]}}
    preds = pd.DataFrame({"label": ["X", "Y", "Y"], "pred": ["X", "X", "Y"], "split": ["train", "train", "val"]})
    cm, names = data.confusion(run, preds, split="test")
    assert names == ["X", "Y"] and cm.tolist() == [[3, 0], [1, 2]]
    cm, _ = data.confusion(run, preds, split="train")
    assert cm.tolist() == [[1, 0], [1, 0]]
    assert data.confusion(run, preds, split="all")[0].sum() == 3
    assert data.confusion({"class_names": ["X", "Y"], "metrics": {}}, preds.iloc[:0], split="test") is None
