"""The disk cache of a cohort's graphs: a corrupt cache is reported, deleted and never used."""

from __future__ import annotations

import json

import dgl
import pytest
import torch

from nucleograph.gnn.graph_cache import CacheWarning, cache_paths, read_cache, write_cache
from nucleograph.gnn.keys import FEAT


@pytest.fixture
def cached(cohort, tmp_path):
    graphs, labels = cohort
    graphs = graphs[:6]
    meta = {"labels": labels[:6].tolist(), "class_names": ["a", "b"], "image_ids": [f"i{k}" for k in range(6)],
            "groups": [None] * 6, "skipped": []}
    write_cache(tmp_path, "v1", graphs, meta)
    return tmp_path, graphs, meta


def test_a_written_cache_reads_back(cached):
    home, graphs, meta = cached
    got, got_meta = read_cache(home, "v1")
    assert [g.num_edges() for g in got] == [g.num_edges() for g in graphs]
    assert torch.equal(got[3].ndata[FEAT], graphs[3].ndata[FEAT])
    assert {k: got_meta[k] for k in meta} == meta
    assert read_cache(home, "v2") is None  # another version: no cache, no warning
    assert sorted(p.name for p in (home / "cache").iterdir()) == ["graphs-2-v1.bin", "graphs-2-v1.json"]


def _truncate_bin(bin_file, meta_file, graphs):
    bin_file.write_bytes(bin_file.read_bytes()[: bin_file.stat().st_size // 2])


def _flip_a_feature_byte(bin_file, meta_file, graphs):
    # DGL loads this without complaint: one nucleus feature silently changes
    data = bytearray(bin_file.read_bytes())
    at = bytes(data).find(graphs[3].ndata[FEAT].numpy().tobytes()[:64])
    assert at > 0
    data[at + 3] ^= 0x40
    bin_file.write_bytes(bytes(data))
    assert not torch.equal(dgl.load_graphs(str(bin_file))[0][3].ndata[FEAT], graphs[3].ndata[FEAT])


def _garble_json(bin_file, meta_file, graphs):
    meta_file.write_text(meta_file.read_text()[:-7])


def _empty_json(bin_file, meta_file, graphs):
    meta_file.write_text("")


def _json_not_an_object(bin_file, meta_file, graphs):
    meta_file.write_text(json.dumps([1, 2, 3]))


@pytest.mark.parametrize(
    "corrupt", [_truncate_bin, _flip_a_feature_byte, _garble_json, _empty_json, _json_not_an_object]
)
def test_a_corrupt_cache_is_a_warning_and_is_deleted(cached, corrupt):
    home, graphs, meta = cached
    bin_file, meta_file = cache_paths(home, "v1")
    corrupt(bin_file, meta_file, graphs)
    with pytest.warns(CacheWarning, match="is unusable .*reading the cohort from Neo4j again"):
        assert read_cache(home, "v1") is None
    assert not bin_file.exists() and not meta_file.exists()
    write_cache(home, "v1", graphs, meta)  # what load_cohort does next
    assert len(read_cache(home, "v1")[0]) == 6


def test_graphs_without_their_metadata_are_not_used(cached):
    # a writer killed between its two files (or still between them): no cache yet, nothing to warn about
    home, _, _ = cached
    cache_paths(home, "v1")[1].unlink()
    assert read_cache(home, "v1") is None
