from dataclasses import replace

import dgl
import numpy as np
import pytest
import torch
from gnn_synth import make_cohort

from nucleograph.errors import InputError, ModelError
from nucleograph.gnn.checkpoints import load_checkpoint
from nucleograph.gnn.models import SeedEnsemble
from nucleograph.gnn.train import TrainConfig, kfold, predict_proba, train_model

SMALL = {"conv_feats": (16, 16, 16), "pool_sizes": (8, 4), "fc_feats": (32, 16)}


@pytest.fixture(scope="module")
def learn_cohort():
    return make_cohort(40, 40, seed=3)


def test_rsf_learns_arrangement_mlp_cannot(learn_cohort):
    graphs, labels = learn_cohort
    split = None
    acc = {}
    for name in ("rsf", "mlp"):
        res = train_model(
            graphs,
            labels,
            TrainConfig(
                model_name=name, epochs=10, batch_size=8, val_fraction=0.2, test_fraction=0.3, patience=None
            ),
            split=split,
        )
        split = (res.split["train"], res.split["val"], res.split["test"])
        acc[name] = res.metrics["accuracy"]
        assert res.proba.shape == (80, 2) and np.allclose(res.proba.sum(1), 1)
    assert acc["rsf"] >= 0.85
    assert acc["rsf"] >= acc["mlp"] + 0.2


def test_graph_statistics_baseline_reads_the_arrangement_without_features(learn_cohort):
    # clustered and uniform graphs of pure-noise features: only the structure tells them apart
    graphs, labels = learn_cohort
    cfg = TrainConfig(model_name="graphstats", epochs=30, batch_size=8, val_fraction=0.2, test_fraction=0.3,
                      patience=None)
    res = train_model(graphs, labels, cfg)
    assert res.metrics["accuracy"] >= 0.85
    shuffled = [g.clone() for g in graphs]
    for g in shuffled:  # the model never reads node features: permuting them changes nothing
        g.ndata["feat"] = g.ndata["feat"][torch.randperm(g.num_nodes())]
    assert np.allclose(predict_proba(res.model, shuffled), predict_proba(res.model, graphs))


def test_checkpoint_resume_equals_uninterrupted(cohort, tmp_path):
    graphs, labels = cohort
    cfg = TrainConfig(model_name="rsf-edge", batch_size=8, seed=5, model_kwargs=SMALL, patience=None, epochs=4)
    full = train_model(graphs, labels, cfg, checkpoint_dir=tmp_path / "a")
    train_model(graphs, labels, replace(cfg, epochs=2), checkpoint_dir=tmp_path / "b")  # "crash" after epoch 2
    resumed = train_model(graphs, labels, cfg, checkpoint_dir=tmp_path / "b")
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
    assert np.allclose(full.proba, resumed.proba, atol=1e-6)
    model, scaler, config = load_checkpoint(full.checkpoint_path)
    assert config["model_name"] == "rsf-edge" and np.allclose(scaler.mean, full.scaler.mean)
    assert np.allclose(predict_proba(model, graphs), full.proba, atol=1e-6)
    with pytest.raises(ModelError, match="resume=False"):
        train_model(graphs, labels, replace(cfg, seed=6), checkpoint_dir=tmp_path / "b")


def test_early_stopping_and_kfold(cohort, tmp_path):
    graphs, labels = cohort
    res = kfold(
        graphs,
        labels,
        TrainConfig(model_name="rsf-attention", epochs=3, patience=1, model_kwargs=SMALL),
        k=3,
        checkpoint_dir=tmp_path,
    )
    assert len(res) == 3
    tests = np.concatenate([r.split["test"] for r in res])
    assert sorted(tests.tolist()) == list(range(len(graphs)))
    assert all((tmp_path / f"fold{i}" / "model.pt").exists() for i in range(3))


def test_one_class_cohort(cohort):
    graphs, _ = cohort
    with pytest.raises(InputError, match="only one class"):
        train_model(graphs, np.zeros(len(graphs), dtype=int), TrainConfig(model_name="rsf"))


def test_config_defaults_and_cosine_schedule():
    cfg = TrainConfig()
    assert (cfg.model_name, cfg.lr, cfg.epochs, cfg.batch_size, cfg.patience) == ("rsf", 0.003, 50, 8, 10)
    assert cfg.lr_at(0) == pytest.approx(0.003)
    assert cfg.lr_at(25) == pytest.approx(0.003 * (0.05 + 0.95 * 0.5))
    assert cfg.lr_at(50) == cfg.lr_at(80) == pytest.approx(0.003 * 0.05)


def test_load_checkpoint_missing(tmp_path):
    with pytest.raises(ModelError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


def test_seeded_runs_repeat(cohort):
    graphs, labels = cohort
    cfg = TrainConfig(model_name="rsf", epochs=2, model_kwargs=SMALL, seed=1)
    a = train_model(graphs, labels, cfg)
    b = train_model(graphs, labels, cfg)
    assert torch.equal(a.model.fc3.weight, b.model.fc3.weight)


def test_thin_graph_drops_nuclei_with_their_edges_and_keeps_the_schemes(cohort):
    from nucleograph.gnn.keys import EFEAT, FEAT
    from nucleograph.gnn.train import thin_graph

    g = cohort[0][0]
    rng = np.random.default_rng(0)
    assert thin_graph(g, 0.0, rng) is g
    half = thin_graph(g, 0.5, rng)
    assert 0.3 * g.num_nodes() < half.num_nodes() < 0.7 * g.num_nodes() and half.num_edges() < g.num_edges()
    # every kept nucleus keeps its own features (rows of the original), and edges join kept nuclei only
    rows = {tuple(r) for r in g.ndata[FEAT].numpy().round(6)}
    assert all(tuple(r) in rows for r in half.ndata[FEAT].numpy().round(6))
    one = thin_graph(g, 0.999999, np.random.default_rng(1))
    assert one.num_nodes() >= 1 and EFEAT in one.edata  # dgl.batch needs the edge scheme on every part


def test_drop_nodes_augmentation_trains_repeatably_and_differs_from_none(cohort):
    graphs, labels = cohort
    cfg = TrainConfig(model_name="rsf", epochs=2, batch_size=8, seed=2, model_kwargs=SMALL, patience=None)
    plain = train_model(graphs, labels, cfg)
    a = train_model(graphs, labels, replace(cfg, drop_nodes=0.5))
    b = train_model(graphs, labels, replace(cfg, drop_nodes=0.5))
    assert np.array_equal(a.proba, b.proba)  # the drops are seeded by the run's seed and epoch
    assert not np.allclose(a.proba, plain.proba)
    assert [h["epoch"] for h in a.history] == [0, 1]


@pytest.mark.parametrize("share", [-0.1, 1.0])
def test_train_cohort_refuses_a_drop_share_outside_0_1(share):
    from nucleograph.gnn.service import train_cohort

    # checked before Neo4j or SQL is touched
    with pytest.raises(InputError, match=r"drop_nodes .* in \[0, 1\)"):
        train_cohort(None, None, "any", drop_nodes=share)


def test_seed_ensemble_trains_members_on_one_split_and_reloads(cohort, tmp_path):
    graphs, labels = cohort
    cfg = TrainConfig(model_name="rsf-edge", epochs=2, patience=None, model_kwargs=SMALL, seed=4)
    single = train_model(graphs, labels, cfg)
    ens = train_model(graphs, labels, replace(cfg, ensemble=3), checkpoint_dir=tmp_path)
    assert isinstance(ens.model, SeedEnsemble) and len(ens.model.members) == 3
    assert ens.n_parameters == 3 * single.n_parameters
    # member 0 is the single model of the ensemble's seed, on the same split
    assert all(np.array_equal(ens.split[k], single.split[k]) for k in ("train", "val", "test"))
    assert torch.equal(ens.model.members[0].fc3.weight, single.model.fc3.weight)
    assert not torch.equal(ens.model.members[1].fc3.weight, ens.model.members[0].fc3.weight)
    # its logits are the mean of its members', and its probabilities what training reported
    bg = dgl.batch(graphs[:5])
    with torch.no_grad():
        mean = torch.stack([m(bg) for m in ens.model.members]).mean(0)
        assert torch.allclose(ens.model(bg), mean, atol=1e-6)
    model, _scaler, config = load_checkpoint(tmp_path / "model.pt")
    assert isinstance(model, SeedEnsemble) and config["ensemble"] == 3 and config["member_seeds"][0] == 4
    assert np.allclose(predict_proba(model, graphs), ens.proba, atol=1e-6)
    assert all((tmp_path / f"member{m}" / "model.pt").exists() for m in range(3))
    with pytest.raises(InputError, match="at least one member"):
        train_model(graphs, labels, replace(cfg, ensemble=0))


def test_ensemble_members_must_share_an_architecture():
    from gnn_synth import small_model

    rng = np.random.default_rng(0)
    with pytest.raises(ModelError, match="at least two"):
        SeedEnsemble([small_model("rsf", rng)])
    with pytest.raises(ModelError, match="one architecture"):
        SeedEnsemble([small_model("rsf", rng), small_model("rsf-edge", rng)])
