from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage as ndi

from nucleograph.errors import InputError, ModelError
from nucleograph.ingest.detect import DEFAULT_TTA, detect_nuclei, match_centroids
from nucleograph.ingest.features import nucleus_features
from nucleograph.ingest.unet import (
    DEFAULT_WEIGHTS,
    SYNTHETIC_WEIGHTS,
    UNet,
    _sample_batch,
    distance_target,
    load_unet,
    predict_maps,
    train_unet,
)


@pytest.fixture(scope="module")
def net():
    return load_unet()


def test_shipped_weights_are_small(net):
    for path in (DEFAULT_WEIGHTS, SYNTHETIC_WEIGHTS):
        assert path.is_file()
        assert path.stat().st_size < 2 * 1024 * 1024
    assert not net.training
    assert net.scale == 0.5  # the shipped network runs at half resolution
    assert load_unet(SYNTHETIC_WEIGHTS).scale == 1.0  # checkpoints without a scale load at full size
    assert (DEFAULT_WEIGHTS.parent / "README.md").is_file()


def test_forward_shape():
    torch.manual_seed(0)
    out = UNet(width=4, depth=2)(torch.rand(2, 3, 64, 48))
    assert out.shape == (2, 2, 64, 48)
    assert "scale=1" in repr(UNet(width=4, depth=2))


@pytest.mark.parametrize("scale", [0.0, 0.1, 1.5])
def test_scale_is_checked(scale):
    with pytest.raises(ValueError, match=r"scale must be in \[0.125, 1\]"):
        UNet(width=4, depth=2, scale=scale)


def test_predict_maps_resamples_by_the_network_scale():
    # A network that outputs its input's red channel as logits: at scale 0.5 the maps come back at
    # full size and smooth (the image was halved, then enlarged), at scale 1 they are exact.
    torch.manual_seed(0)
    img = np.random.default_rng(1).integers(0, 256, size=(100, 140, 3), dtype=np.uint8)
    full, half = UNet(width=2, depth=1, scale=1.0), UNet(width=2, depth=1, scale=0.5)
    for net in (full, half):
        net.eval()
        net.forward = lambda x: torch.logit(x[:, :2].clamp(1e-4, 1 - 1e-4))
        net.down, net.merge = torch.nn.ModuleList(), torch.nn.ModuleList()  # nothing to fuse
    p_full, _ = predict_maps(full, img, tile=64, overlap=16)
    p_half, _ = predict_maps(half, img, tile=64, overlap=16)
    assert p_full.shape == p_half.shape == (100, 140)
    np.testing.assert_allclose(p_full, img[..., 0] / 255.0, atol=1e-3)
    assert np.abs(p_half - img[..., 0] / 255.0).mean() > 0.05  # detail lost at half size
    assert abs(p_half.mean() - p_full.mean()) < 0.01


@pytest.mark.parametrize("shape", [(40, 50), (300, 200), (700, 530)])
def test_predict_maps_any_size(net, shape):
    img = np.random.default_rng(0).integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    prob, dist = predict_maps(net, img, tile=384, overlap=64)
    assert prob.shape == shape and dist.shape == shape
    assert prob.dtype == np.float32 and 0 <= prob.min() and prob.max() <= 1


def test_tiles_do_not_show(net):
    from nucleograph.ingest import synth
    img = synth.synthesize_image("breast", "InSitu", rng=np.random.default_rng(5), size=(512, 384)).image
    tiled, _ = predict_maps(net, img, tile=192, overlap=64)
    whole, _ = predict_maps(net, img, tile=640, overlap=64)
    assert np.mean(np.abs(tiled - whole)) < 0.02
    assert np.mean((tiled > 0.5) == (whole > 0.5)) > 0.99


@pytest.mark.parametrize("tta", [2, 4, 8])
def test_test_time_augmentation_averages_the_symmetric_images(net, tta):
    # Averaged over a group of symmetries (mirror; the mirrors and half turn; all eight), the maps of a
    # transformed image are the transformed maps: the network itself is not symmetric, the average is.
    img = np.random.default_rng(3).integers(0, 256, size=(96, 136, 3), dtype=np.uint8)
    prob, dist = predict_maps(net, img, tta=tta)
    mirror, _ = predict_maps(net, np.ascontiguousarray(img[:, ::-1]), tta=tta)
    np.testing.assert_allclose(mirror[:, ::-1], prob, atol=1e-5)
    if tta == 8:
        transposed, _ = predict_maps(net, np.ascontiguousarray(img.transpose(1, 0, 2)), tta=tta)
        np.testing.assert_allclose(transposed.T, prob, atol=1e-5)
    # and it is the mean of the plain predictions on the transformed images, mapped back
    plain = [predict_maps(net, img)[0], predict_maps(net, np.ascontiguousarray(img[:, ::-1]))[0][:, ::-1]]
    if tta == 2:
        np.testing.assert_allclose(prob, np.mean(plain, 0), atol=1e-5)
    assert not np.allclose(prob, plain[0], atol=1e-3)  # the network alone is not mirror-symmetric
    assert prob.shape == dist.shape == img.shape[:2]


def test_predict_maps_arguments(net):
    img = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="multiple of 8"):
        predict_maps(net, img, tile=100)
    with pytest.raises(ValueError, match="overlap must be even"):
        predict_maps(net, img, tile=128, overlap=7)
    with pytest.raises(ValueError, match="uint8 RGB"):
        predict_maps(net, img.astype(np.float32))
    with pytest.raises(ValueError, match="tta must be 1, 2, 4 or 8"):
        predict_maps(net, img, tta=3)


def test_unet_detects_synthetic_nuclei(net):
    from nucleograph.ingest import synth
    # Seed 2024 is not among the training images (cohort seed 101, see weights/README.md).
    tile = synth.synthesize_image("breast", "Invasive", rng=np.random.default_rng(2024), size=(512, 512))
    labels = detect_nuclei(tile.image, method="unet", model=net)
    f = nucleus_features(tile.image, labels)
    scores = match_centroids(
        np.c_[f["centroid_x"], f["centroid_y"]], tile.nuclei[["centroid_x", "centroid_y"]].to_numpy()
    )
    assert scores["f1"] >= 0.95, scores


def test_distance_target():
    mask = np.zeros((30, 40), np.int32)
    mask[5:15, 5:15] = 1
    mask[5:15, 15:25] = 2  # touches 1
    d = distance_target(mask)
    assert d.dtype == np.float32 and d.max() == pytest.approx(1.0)
    assert (d[mask == 0] == 0).all()
    assert d[10, 14] < 0.5 and d[10, 15] < 0.5  # the shared border is low
    assert d[9, 9] == pytest.approx(1.0, abs=0.25)


def _write_pair(images: Path, masks: Path, name: str, *, binary=False, seed=0):
    rng = np.random.default_rng(seed)
    img = np.full((64, 64, 3), 230, np.uint8)
    mask = np.zeros((64, 64), np.uint16)
    for k in range(1, 5):
        r, c = rng.integers(10, 54, size=2)
        mask[r - 4 : r + 4, c - 4 : c + 4] = k
    img[mask > 0] = (60, 40, 140)
    images.mkdir(parents=True, exist_ok=True)
    masks.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(images / f"{name}.png")
    Image.fromarray(((mask > 0) * 255).astype(np.uint8) if binary else mask).save(masks / f"{name}.png")


def test_train_unet_roundtrip(tmp_path):
    _write_pair(tmp_path / "img" / "A", tmp_path / "msk" / "A", "x1")
    _write_pair(tmp_path / "img" / "B", tmp_path / "msk" / "B", "x2", binary=True, seed=1)
    out = tmp_path / "w" / "u.pt"
    hist = train_unet(
        tmp_path / "img",
        tmp_path / "msk",
        out=out,
        epochs=2,
        steps_per_epoch=2,
        patch=32,
        batch_size=2,
        width=4,
        depth=2,
    )
    assert hist["images"] == 2 and len(hist["loss"]) == 2 and np.isfinite(hist["loss"]).all()
    net = load_unet(out)
    assert (net.width, net.depth) == (4, 2)
    labels = detect_nuclei(np.full((64, 64, 3), 230, np.uint8), method="unet", model=net)
    assert labels.shape == (64, 64)


def test_train_unet_is_seeded(tmp_path):
    _write_pair(tmp_path / "img", tmp_path / "msk", "x1")
    kw = dict(epochs=1, steps_per_epoch=2, patch=32, batch_size=2, width=4, depth=2, seed=3)
    a = train_unet(tmp_path / "img", tmp_path / "msk", out=tmp_path / "a.pt", **kw)
    b = train_unet(tmp_path / "img", tmp_path / "msk", out=tmp_path / "b.pt", **kw)
    assert a["loss"] == b["loss"]


def test_train_unet_unmatched(tmp_path):
    _write_pair(tmp_path / "img", tmp_path / "msk", "x1")
    _write_pair(tmp_path / "img", tmp_path / "other", "x2")
    with pytest.raises(InputError, match=r"1 image\(s\) have no mask .*x2\.png"):
        train_unet(tmp_path / "img", tmp_path / "msk", out=tmp_path / "u.pt", epochs=1, patch=32)


def test_train_unet_bad_folders(tmp_path):
    with pytest.raises(InputError, match="images folder not found"):
        train_unet(tmp_path / "nope", tmp_path, out=tmp_path / "u.pt")
    _write_pair(tmp_path / "img", tmp_path / "msk", "x1")
    with pytest.raises(InputError, match="smaller than patch=128"):
        train_unet(tmp_path / "img", tmp_path / "msk", out=tmp_path / "u.pt", epochs=1, patch=128)
    with pytest.raises(ValueError, match="patch must be a positive multiple of 8"):
        train_unet(tmp_path / "img", tmp_path / "msk", out=tmp_path / "u.pt", patch=30)


def test_load_unet_errors(tmp_path):
    with pytest.raises(InputError, match=r"missing\.pt: U-Net weights not found"):
        load_unet(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match=r"junk\.pt: not a nucleograph U-Net checkpoint"):
        load_unet(tmp_path / "junk.pt")


def test_train_unet_scale_zoom_and_init(tmp_path):
    _write_pair(tmp_path / "img", tmp_path / "msk", "x1")
    kw = dict(epochs=1, steps_per_epoch=2, batch_size=2, width=4, depth=2)
    train_unet(tmp_path / "img", tmp_path / "msk", out=tmp_path / "a.pt", patch=32, **kw)
    hist = train_unet(
        tmp_path / "img", tmp_path / "msk", out=tmp_path / "b.pt", patch=16, scale=0.5, zoom=(0.8, 1.25),
        init=tmp_path / "a.pt", **kw,
    )
    assert np.isfinite(hist["loss"]).all()
    net = load_unet(tmp_path / "b.pt")
    assert net.scale == 0.5
    assert torch.load(tmp_path / "b.pt", weights_only=False)["train"]["init"] == str(tmp_path / "a.pt")
    with pytest.raises(InputError, match=r"smaller than patch=64 network pixels \(after scale=0.5\)"):
        train_unet(tmp_path / "img", tmp_path / "msk", out=tmp_path / "c.pt", patch=64, scale=0.5, **kw)
    with pytest.raises(ValueError, match="zoom must be"):
        train_unet(tmp_path / "img", tmp_path / "msk", out=tmp_path / "c.pt", patch=16, zoom=(1.2, 0.9), **kw)
    with pytest.raises(ValueError, match="init has width=4, depth=2"):
        train_unet(
            tmp_path / "img", tmp_path / "msk", out=tmp_path / "c.pt", patch=16, init=tmp_path / "a.pt",
            **(kw | {"width": 8}),
        )


def test_stretch_augmentation_makes_round_nuclei_elongated(tmp_path):
    # A grid of 8 x 8 square nuclei: with stretch 2 the patches show them up to 4x longer one way
    # than the other (rows x a, columns / a); without stretch they stay square.
    planes = torch.zeros((5, 256, 256))
    for r in range(4, 256, 16):
        for c in range(4, 256, 16):
            planes[3, r : r + 8, c : c + 8] = 1.0

    def aspects(stretch):
        gen = torch.Generator().manual_seed(0)
        batch = _sample_batch(
            [planes], torch.ones(1), batch_size=8, patch=32, zoom=(1.0, 1.0), gen=gen, stretch=stretch
        )
        out = []
        for fg in (batch[:, 3] > 0.5).numpy():
            labels, _ = ndi.label(fg)
            for sl in ndi.find_objects(labels):
                rows, cols = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
                if sl[0].start > 0 and sl[1].start > 0 and sl[0].stop < 32 and sl[1].stop < 32:
                    out.append(max(rows, cols) / min(rows, cols))
        return np.array(out)

    square = aspects(1.0)
    assert square.size and np.all(square <= 1.3)
    stretched = aspects(2.0)
    assert stretched.max() > 2.0 and stretched.min() < 1.5
    _write_pair(tmp_path / "img", tmp_path / "msk", "x1")
    with pytest.raises(ValueError, match="stretch must be >= 1"):
        train_unet(tmp_path / "img", tmp_path / "msk", out=tmp_path / "u.pt", patch=16, stretch=0.5)


def test_ingest_key_follows_the_shipped_weights_tta_and_post_processing(tmp_path, monkeypatch):
    # New weights or another test-time augmentation detect other nuclei: an ingest with the U-Net must
    # then redo its images, so both are in its parameter key; the watershed's key does not move.
    from nucleograph.ingest import detect, unet
    from nucleograph.ingest.pipeline import IngestParams

    params, watershed = IngestParams(detector="unet"), IngestParams()
    key, other = params.key(), watershed.key()
    assert key != other and key == IngestParams(detector="unet").key()
    changed = tmp_path / "unet_he.pt"
    changed.write_bytes(DEFAULT_WEIGHTS.read_bytes() + b"\0")
    monkeypatch.setattr(unet, "DEFAULT_WEIGHTS", changed)
    detect.unet_version.cache_clear()
    try:
        assert params.key() != key and watershed.key() == other
        monkeypatch.setattr(unet, "DEFAULT_WEIGHTS", DEFAULT_WEIGHTS)
        detect.unet_version.cache_clear()
        assert params.key() == key
        monkeypatch.setattr(detect, "DEFAULT_TTA", 1)
        detect.unet_version.cache_clear()
        assert params.key() != key and watershed.key() == other
        monkeypatch.setattr(detect, "DEFAULT_TTA", DEFAULT_TTA)
        monkeypatch.setattr(detect, "GROW", None)
        detect.unet_version.cache_clear()
        assert params.key() != key and watershed.key() == other
    finally:
        monkeypatch.undo()
        detect.unet_version.cache_clear()
    assert params.key() == key
