"""A small U-Net for nucleus segmentation: foreground and distance-to-boundary maps.

The network (Ronneberger et al., 2015, narrowed) predicts two maps per pixel:

* ``prob``: probability that the pixel belongs to a nucleus;
* ``dist``: distance to the nucleus boundary divided by the nucleus' largest such distance
  (1 at the centre, falling to 0 at the edge), which separates touching nuclei.

:func:`nucleograph.ingest.detect.detect_nuclei` with ``method="unet"`` turns them into instances by a
watershed on ``dist`` inside ``prob > 0.5``. Inference is tiled with overlap, so any image
size works in bounded memory. Torch threads and devices are the caller's: nothing here sets
them, and ``device=`` defaults to ``"cpu"``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn
from torch.nn import functional as F

from nucleograph.errors import InputError, ModelError

__all__ = [
    "DEFAULT_WEIGHTS",
    "UNet",
    "distance_target",
    "load_unet",
    "predict_maps",
    "train_unet",
]

#: Weights shipped with nucleograph, trained on synthetic H&E (see ingest/weights/README.md).
DEFAULT_WEIGHTS = Path(__file__).with_name("weights") / "unet_synth.pt"
_MASK_EXTENSIONS = (".png", ".tif", ".tiff")


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net with ``depth`` poolings and ``width * 2**k`` channels at level k.

    Parameters
    ----------
    width : int
        Channels of the first level.
    depth : int
        Number of 2x poolings; input sides must be multiples of ``2**depth``
        (:func:`predict_maps` pads for you).

    Notes
    -----
    ``forward(x)`` takes (B, 3, H, W) float RGB scaled to [0, 1] and returns (B, 2, H, W)
    logits: channel 0 foreground, channel 1 normalised distance (apply a sigmoid to both).
    """

    def __init__(self, width: int = 8, depth: int = 3):
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be >= 1; got width={width}, depth={depth}")
        self.width, self.depth = width, depth
        chans = [width * 2**k for k in range(depth + 1)]
        self.down = nn.ModuleList(
            [_block(3, chans[0])] + [_block(chans[k - 1], chans[k]) for k in range(1, depth + 1)]
        )
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(chans[k], chans[k - 1], 2, stride=2) for k in range(depth, 0, -1)]
        )
        self.merge = nn.ModuleList([_block(2 * chans[k - 1], chans[k - 1]) for k in range(depth, 0, -1)])
        self.head = nn.Conv2d(chans[0], 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for k, block in enumerate(self.down):
            x = block(x if k == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for up, merge in zip(self.up, self.merge, strict=True):
            x = merge(torch.cat([up(x), skips.pop()], dim=1))
        return self.head(x)

    def extra_repr(self) -> str:
        return f"width={self.width}, depth={self.depth}"


# ----------------------------------------------------------------------------- inference


def load_unet(path: str | Path | None = None, *, device: str = "cpu") -> UNet:
    """Load a U-Net checkpoint written by :func:`train_unet`, in eval mode.

    Parameters
    ----------
    path : str or Path, optional
        Checkpoint; default :data:`DEFAULT_WEIGHTS` (trained on synthetic H&E).
    device : str, optional
        Torch device to put the network on.
    """
    path = DEFAULT_WEIGHTS if path is None else Path(path)
    if not path.is_file():
        raise InputError(
            f"{path}: U-Net weights not found; train them with ingest.unet.train_unet() or pass path=None"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        net = UNet(**ckpt["config"])
        net.load_state_dict(ckpt["state_dict"])
    except Exception as exc:
        raise ModelError(
            f"{path}: not a nucleograph U-Net checkpoint ({type(exc).__name__}: {exc}); retrain it"
        ) from exc
    return net.to(device).eval()


def _inference_copy(net: UNet) -> UNet:
    """An eval-mode copy with each conv+batch-norm+ReLU fused into one op, channels-last.

    On CPU this runs about 4x faster than the training graph (0.23 s vs 0.93 s per 512x512 tile
    with width 8 on 2 cores) and gives the same outputs up to float rounding.
    """
    import copy

    from torch.ao.quantization import fuse_modules

    fused = copy.deepcopy(net).eval()
    for seq in [*fused.down, *fused.merge]:
        fuse_modules(seq, [["0", "1", "2"], ["3", "4", "5"]], inplace=True)
    return fused.to(memory_format=torch.channels_last)


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255.0)


@torch.inference_mode()
def predict_maps(
    net: UNet, image: np.ndarray, *, tile: int = 512, overlap: int = 64, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground probability and normalised distance maps of an RGB image, tile by tile.

    Each tile is predicted with ``overlap // 2`` pixels of context on every side and only its
    centre is kept, so tile seams do not show; the image border is mirrored.

    Parameters
    ----------
    net : UNet
    image : (H, W, 3) uint8 ndarray
    tile : int, optional
        Network input side; a multiple of ``2**net.depth``.
    overlap : int, optional
        Context shared by neighbouring tiles, even, ``< tile``.
    device : str, optional

    Returns
    -------
    prob, dist : (H, W) float32 ndarray
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB; got shape {image.shape}, dtype {image.dtype}")
    mult = 2**net.depth
    if tile % mult or tile <= 0:
        raise ValueError(f"tile must be a positive multiple of {mult} for this network; got {tile}")
    if overlap % 2 or not 0 <= overlap < tile:
        raise ValueError(f"overlap must be even and in [0, tile); got {overlap}")
    device_net = _inference_copy(net).to(device)
    h, w = image.shape[:2]
    core, m = tile - overlap, overlap // 2
    # Small images: one tile just big enough.
    if h <= core and w <= core:
        th, tw = -(-(h + overlap) // mult) * mult, -(-(w + overlap) // mult) * mult
    else:
        th = tw = tile
    core_h, core_w = th - overlap, tw - overlap
    ny, nx = -(-h // core_h), -(-w // core_w)
    pad_b, pad_r = ny * core_h + overlap - h - m, nx * core_w + overlap - w - m
    padded = np.pad(
        image,
        ((m, pad_b), (m, pad_r), (0, 0)),
        mode="reflect" if min(h, w) > max(m, pad_b, pad_r) else "edge",
    )
    x = _to_tensor(padded)
    out = np.zeros((2, ny * core_h, nx * core_w), np.float32)
    for iy in range(ny):
        for ix in range(nx):
            y0, x0 = iy * core_h, ix * core_w
            window = (
                x[:, y0 : y0 + th, x0 : x0 + tw].unsqueeze(0).to(device, memory_format=torch.channels_last)
            )
            pred = torch.sigmoid(device_net(window))[0, :, m : m + core_h, m : m + core_w]
            out[:, y0 : y0 + core_h, x0 : x0 + core_w] = pred.cpu().numpy()
    return out[0, :h, :w], out[1, :h, :w]


# ----------------------------------------------------------------------------- training


def distance_target(mask: np.ndarray) -> np.ndarray:
    """Normalised distance-to-boundary of every instance: 1 at its centre, 0 outside.

    Parameters
    ----------
    mask : (H, W) int ndarray
        Instance labels.

    Returns
    -------
    dist : (H, W) float32 ndarray
    """
    mask = np.asarray(mask)
    # Pixels touching another instance count as boundary so touching nuclei separate.
    fg = mask > 0
    touching = fg & (
        ndi.grey_dilation(mask, size=3) != ndi.grey_erosion(np.where(fg, mask, mask.max() + 1), size=3)
    )
    dist = ndi.distance_transform_edt(fg & ~touching).astype(np.float32)
    peak = ndi.maximum(dist, mask, index=np.arange(mask.max() + 1)) if mask.max() > 0 else np.zeros(1)
    peak = np.asarray(peak, np.float32)
    peak[peak == 0] = 1.0
    return np.where(fg, dist / peak[mask], 0.0).astype(np.float32)


def _key(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def _pairs(images_dir: Path, masks_dir: Path) -> list[tuple[Path, Path]]:
    from .readers import IMAGE_EXTENSIONS

    for d, what in ((images_dir, "images"), (masks_dir, "masks")):
        if not d.is_dir():
            raise InputError(f"{d}: {what} folder not found; give the folder that holds the {what}.")
    images = {
        _key(p, images_dir): p for p in sorted(images_dir.rglob("*")) if p.suffix.lower() in IMAGE_EXTENSIONS
    }
    masks = {
        _key(p, masks_dir): p for p in sorted(masks_dir.rglob("*")) if p.suffix.lower() in _MASK_EXTENSIONS
    }
    if not images:
        raise InputError(f"{images_dir}: no images found (PNG, JPEG, TIFF)")
    # Match by relative path without extension, else by bare file stem.
    by_stem = {Path(k).name: v for k, v in masks.items()}
    pairs, unmatched = [], []
    for key, img in images.items():
        mask = masks.get(key) or by_stem.get(Path(key).name)
        if mask is None:
            unmatched.append(str(img))
        else:
            pairs.append((img, mask))
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else "")
        raise InputError(
            f"{len(unmatched)} image(s) have no mask in {masks_dir} with the same name: {shown}. "
            "Masks are matched by file stem (image a/x.png <-> mask a/x.png or x.tif)."
        )
    return pairs


def _read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            mask = np.asarray(im)
    except Exception as exc:
        raise InputError(f"{path}: cannot read mask ({exc}); masks are label or binary PNG/TIFF") from exc
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != shape:
        raise InputError(
            f"{path}: mask is {mask.shape[::-1]} but its image is {shape[::-1]} (width x height)"
        )
    values = np.unique(mask)
    if values.size <= 2:  # binary mask: instances are its connected components
        mask = ndi.label(mask > 0)[0]
    return mask.astype(np.int32)


def _augment_colour(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random stain strength and brightness, in optical-density space (B, 3, H, W in [0, 1])."""
    od = -torch.log(x.clamp_min(1.0 / 255.0))
    b = x.shape[0]
    scale = 1.0 + 0.25 * (2 * torch.rand(b, 3, 1, 1, generator=gen) - 1)
    shift = 0.05 * (2 * torch.rand(b, 3, 1, 1, generator=gen) - 1)
    return torch.exp(-(od * scale + shift).clamp_min(0.0)).clamp(0.0, 1.0)


def train_unet(
    images_dir: str | Path,
    masks_dir: str | Path,
    *,
    out: str | Path,
    epochs: int = 12,
    patch: int = 128,
    batch_size: int = 8,
    steps_per_epoch: int | None = None,
    lr: float = 3e-3,
    width: int = 8,
    depth: int = 3,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
) -> dict:
    """Train a :class:`UNet` on image/mask folders and save the checkpoint.

    Parameters
    ----------
    images_dir, masks_dir : str or Path
        Folders (searched recursively) of RGB images and of masks with the same relative path
        or file stem. Masks are instance label images (e.g. 16-bit PNG) or binary masks (then
        instances are connected components).
    out : str or Path
        Checkpoint to write (``.pt``).
    epochs : int, optional
        Passes; one epoch draws ``steps_per_epoch`` batches of random patches.
    patch : int, optional
        Patch side; a multiple of ``2**depth``. 128 px holds several nuclei at 0.4-0.5 um/px
        and keeps a CPU step near 0.25 s; the defaults are the recipe of the shipped weights.
    batch_size : int, optional
    steps_per_epoch : int, optional
        Default: enough patches to cover the training pixels once.
    lr : float, optional
        Adam learning rate, decayed by cosine to 5 % over training.
    width, depth : int, optional
        Network size (see :class:`UNet`); width 8, depth 3 is 121k parameters, about 0.5 MB.
    seed : int, optional
        Seeds patch sampling, augmentation and initialisation.
    device : str, optional
    progress : bool, optional
        Show a tqdm progress bar.

    Returns
    -------
    history : dict
        ``loss`` (mean per epoch), ``seconds``, ``images`` and ``out``.
    """
    from .readers import read_image

    if epochs < 1:
        raise ValueError(f"epochs must be >= 1; got {epochs}")
    if patch % 2**depth or patch < 2**depth:
        raise ValueError(f"patch must be a positive multiple of {2**depth}; got {patch}")
    pairs = _pairs(Path(images_dir), Path(masks_dir))
    images, fgs, dists = [], [], []
    for img_path, mask_path in pairs:
        img = read_image(img_path)
        mask = _read_mask(mask_path, img.shape[:2])
        if min(img.shape[:2]) < patch:
            raise InputError(f"{img_path}: image is smaller than patch={patch}; lower patch=")
        images.append(_to_tensor(img))
        fgs.append(torch.from_numpy(mask > 0).float())
        dists.append(torch.from_numpy(distance_target(mask)))
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    # channels-last halves the step time of these narrow convolutions on CPU
    net = UNet(width=width, depth=depth).to(device, memory_format=torch.channels_last)
    if steps_per_epoch is None:
        pixels = sum(t.shape[1] * t.shape[2] for t in images)
        steps_per_epoch = max(1, pixels // (patch * patch * batch_size))
    total = epochs * steps_per_epoch
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total, eta_min=0.05 * lr)
    history = {"loss": [], "images": len(pairs), "out": str(out)}
    steps = range(total)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="train U-Net", unit="step")
    start = time.perf_counter()
    net.train()
    running = []
    for step in steps:
        xs, fs, ds = [], [], []
        for _ in range(batch_size):
            k = int(torch.randint(len(images), (1,), generator=gen))
            _, h, w = images[k].shape
            y0 = int(torch.randint(h - patch + 1, (1,), generator=gen))
            x0 = int(torch.randint(w - patch + 1, (1,), generator=gen))
            win = np.s_[..., y0 : y0 + patch, x0 : x0 + patch]
            x, f, d = images[k][win], fgs[k][win], dists[k][win]
            rot = int(torch.randint(4, (1,), generator=gen))
            flip = bool(torch.randint(2, (1,), generator=gen))
            x, f, d = (torch.rot90(t, rot, dims=(-2, -1)) for t in (x, f, d))
            if flip:
                x, f, d = (torch.flip(t, dims=(-1,)) for t in (x, f, d))
            xs.append(x)
            fs.append(f)
            ds.append(d)
        x = _augment_colour(torch.stack(xs), gen).to(device, memory_format=torch.channels_last)
        f = torch.stack(fs).unsqueeze(1).to(device)
        d = torch.stack(ds).unsqueeze(1).to(device)
        logits = net(x)
        loss = F.binary_cross_entropy_with_logits(logits[:, :1], f) + 4.0 * F.mse_loss(
            torch.sigmoid(logits[:, 1:]), d
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        running.append(float(loss))
        if (step + 1) % steps_per_epoch == 0:
            history["loss"].append(float(np.mean(running)))
            running = []
    history["seconds"] = time.perf_counter() - start
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    net.eval()
    state = {k: v.detach().cpu().contiguous().clone() for k, v in net.state_dict().items()}
    torch.save(
        {
            "config": {"width": width, "depth": depth},
            "state_dict": state,
            "train": {k: v for k, v in history.items() if k != "out"}
            | {"epochs": epochs, "patch": patch, "seed": seed},
        },
        out,
    )
    return history
