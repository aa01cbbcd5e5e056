"""The watch-folder scan without Neo4j or SQL: labels from sub-folders and from manifest.csv, the
settle time, hidden files and mask folders; a bad manifest fails the scan with ingest's message."""

from __future__ import annotations

import os
import time

import pytest

from nucleograph.errors import InputError
from nucleograph.jobs.watch import scan_watch_folder


def _touch(path, *, age: float = 60.0, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    then = time.time() - age
    os.utime(path, (then, then))


def test_labels_settle_hidden_and_mask_folders(tmp_path):
    _touch(tmp_path / "InSitu" / "a.png")
    _touch(tmp_path / "InSitu" / "deep" / "b.tif")
    _touch(tmp_path / "top.jpg")
    _touch(tmp_path / "Invasive" / "fresh.png", age=0.0)  # still being copied
    _touch(tmp_path / "Invasive" / ".hidden.png")
    _touch(tmp_path / ".cache" / "c.png")
    _touch(tmp_path / "Invasive" / "masks" / "m.png")
    _touch(tmp_path / "Invasive" / "empty.png", data=b"")
    _touch(tmp_path / "Invasive" / "notes.txt")
    found = {p.path.relative_to(tmp_path.resolve()).as_posix(): p for p in scan_watch_folder(tmp_path, settle=5)}
    assert sorted(found) == ["InSitu/a.png", "InSitu/deep/b.tif", "top.jpg"]
    assert [found[k].label for k in sorted(found)] == ["InSitu", "InSitu", None]
    assert all(p.patient is None and p.mpp is None and p.size == 1 for p in found.values())
    assert len(scan_watch_folder(tmp_path, settle=0)) == 4  # the fresh file, once settled


def test_manifest_labels_patients_and_mpp(tmp_path):
    _touch(tmp_path / "Benign" / "a.png")
    _touch(tmp_path / "b.png")
    # rows may name files that have not arrived yet
    (tmp_path / "manifest.csv").write_text("path,label,patient,mpp\nBenign/a.png,Normal,P1,0.5\n"
                                           "b.png,,P2,\nlater.png,X,P3,0.25\n")
    found = {p.path.name: p for p in scan_watch_folder(tmp_path, settle=1)}
    assert sorted(found) == ["a.png", "b.png"]
    assert (found["a.png"].label, found["a.png"].patient, found["a.png"].mpp) == ("Normal", "P1", 0.5)
    assert (found["b.png"].label, found["b.png"].patient, found["b.png"].mpp) == (None, "P2", None)


def test_bad_mpp_in_the_manifest_fails_the_scan_with_the_fix(tmp_path):
    _touch(tmp_path / "a.png")
    (tmp_path / "manifest.csv").write_text("path,label,mpp\na.png,X,fast\n")
    with pytest.raises(InputError, match=r"manifest\.csv, line 2: mpp must be a positive number"):
        scan_watch_folder(tmp_path, settle=0)


def test_missing_watch_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist or is not a folder"):
        scan_watch_folder(tmp_path / "ghost", settle=0)
