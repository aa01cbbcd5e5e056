from dataclasses import replace

import numpy as np
import pytest
import torch
from gnn_synth import make_cohort

from nucleograph.errors import InputError, ModelError
from nucleograph.gnn.checkpoints import load_checkpoint
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
    assert (cfg.model_name, cfg.lr, cfg.epochs, cfg.batch_size, cfg.patience) == ("rsf", 0.01, 50, 8, 10)
    assert cfg.lr_at(0) == pytest.approx(0.01)
    assert cfg.lr_at(25) == pytest.approx(0.01 * (0.05 + 0.95 * 0.5))
    assert cfg.lr_at(50) == cfg.lr_at(80) == pytest.approx(0.01 * 0.05)


def test_load_checkpoint_missing(tmp_path):
    with pytest.raises(ModelError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


def test_seeded_runs_repeat(cohort):
    graphs, labels = cohort
    cfg = TrainConfig(model_name="rsf", epochs=2, model_kwargs=SMALL, seed=1)
    a = train_model(graphs, labels, cfg)
    b = train_model(graphs, labels, cfg)
    assert torch.equal(a.model.fc3.weight, b.model.fc3.weight)
