"""A small U-Net for nucleus segmentation: foreground and distance-to-boundary maps.

The network (Ronneberger et al., 2015, narrowed) predicts two maps per pixel:

* ``prob``: probability that the pixel belongs to a nucleus;
* ``dist``: distance to the nucleus boundary divided by the nucleus' largest such distance
  (1 at the centre, falling to 0 at the edge), which separates touching nuclei.

:func:`nucleograph.ingest.detect.detect_nuclei` with ``method="unet"`` turns them into instances by a
watershed on ``dist`` inside ``prob > 0.5``, seeded at the cores ``dist > 0.4``. The network runs
at ``UNet.scale`` of the image's resolution (0.5 for the shipped weights: nuclei of 15-20 px become
8-10 px, four times fewer pixels to convolve) and its maps are resized back. Inference is tiled
with overlap, so any image size works in bounded memory. Torch threads and devices are the
caller's: nothing here sets them, and ``device=`` defaults to ``"cpu"``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage.color import hed_from_rgb, rgb_from_hed
from torch import nn
from torch.nn import functional as F

from nucleograph.errors import InputError, ModelError

__all__ = [
    "DEFAULT_TILE",
    "DEFAULT_WEIGHTS",
    "SYNTHETIC_WEIGHTS",
    "UNet",
    "distance_target",
    "load_unet",
    "predict_maps",
    "train_unet",
]

#: Weights shipped with nucleograph and loaded by default: trained on real H&E (the upper two thirds
#: of histolytics' hgsc_nest and hgsc_stromal_he images) and synthetic tiles, run at half resolution
#: (ingest/weights/README.md).
DEFAULT_WEIGHTS = Path(__file__).with_name("weights") / "unet_he.pt"
#: The earlier weights, trained on synthetic H&E only; the starting point of unet_he.pt's training.
SYNTHETIC_WEIGHTS = Path(__file__).with_name("weights") / "unet_synth.pt"
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
    scale : float
        Resampling factor from image pixels to network pixels, part of the model because the
        network learned nuclei at that size: ``0.5`` means images at the training resolution
        (about 0.5 um/px) are halved before the network and its maps are brought back to full
        size. :func:`predict_maps` and :func:`train_unet` apply it.

    Notes
    -----
    ``forward(x)`` takes (B, 3, H, W) float RGB scaled to [0, 1] and returns (B, 2, H, W)
    logits: channel 0 foreground, channel 1 normalised distance (apply a sigmoid to both).
    """

    def __init__(self, width: int = 8, depth: int = 3, scale: float = 1.0):
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be >= 1; got width={width}, depth={depth}")
        if not 0.125 <= scale <= 1.0:
            raise ValueError(f"scale must be in [0.125, 1]; got {scale}")
        self.width, self.depth, self.scale = width, depth, float(scale)
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
        return f"width={self.width}, depth={self.depth}, scale={self.scale:g}"


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


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, C, H, W), antialiased when shrinking, so training and inference agree."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    shrink = size[0] < x.shape[-2] or size[1] < x.shape[-1]
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def _scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    return max(1, round(h * scale)), max(1, round(w * scale))


#: Network pixels of one inference window by default: a 2048-pixel image tile (the ingest's and the
#: slide reader's) at the shipped half resolution is 1,024 network pixels, one window with its overlap.
DEFAULT_TILE = 1088

#: The eight symmetries of the square (``(transpose, flipped axes)``, applied to a ``(C, H, W)`` tensor
#: in that order), in the order test-time augmentation uses them: the identity, the two mirrorings and
#: their product (a half turn) keep the image's shape; the rest transpose it.
DIHEDRAL = (
    (False, ()), (False, (-1,)), (False, (-2,)), (False, (-2, -1)),
    (True, ()), (True, (-1,)), (True, (-2,)), (True, (-2, -1)),
)


def _dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    transpose, dims = DIHEDRAL[k]
    x = x.transpose(-2, -1) if transpose else x
    return torch.flip(x, dims) if dims else x


def _undo_dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    transpose, dims = DIHEDRAL[k]
    x = torch.flip(x, dims) if dims else x
    return x.transpose(-2, -1) if transpose else x


@torch.inference_mode()
def predict_maps(
    net: UNet,
    image: np.ndarray,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = 64,
    tta: int = 1,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Foreground probability and normalised distance maps of an RGB image, tile by tile.

    The image is first resampled by ``net.scale`` (antialiased bilinear); the maps are brought
    back to the image's size the same way. Each tile is predicted with ``overlap // 2`` network
    pixels of context on every side and only its centre is kept, so tile seams do not show; the
    image border is mirrored.

    Parameters
    ----------
    net : UNet
    image : (H, W, 3) uint8 ndarray
    tile : int, optional
        Largest network input side, in network pixels; a multiple of ``2**net.depth``. An image
        that fits is predicted in one window only as large as it needs.
    overlap : int, optional
        Context shared by neighbouring tiles, even, ``< tile``.
    tta : {1, 2, 4, 8}, optional
        Test-time augmentation: the maps are averaged over the network's predictions on the first
        ``tta`` symmetries of :data:`DIHEDRAL` (2: the image and its mirror image; 4: also upside
        down; 8: also transposed), each mapped back. Every one costs a network pass.
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
    if tta not in (1, 2, 4, 8):
        raise ValueError(f"tta must be 1, 2, 4 or 8 (symmetries averaged); got {tta}")
    device_net = _inference_copy(net).to(device)
    full_h, full_w = image.shape[:2]
    x = _resize(_to_tensor(image).unsqueeze(0), _scaled_size(full_h, full_w, net.scale))[0]
    out = _predict_tiles(device_net, x, tile=tile, overlap=overlap, device=device)
    for k in range(1, tta):
        out += _undo_dihedral(
            _predict_tiles(device_net, _dihedral(x, k).contiguous(), tile=tile, overlap=overlap, device=device), k
        )
    if tta > 1:
        out /= tta
    maps = _resize(out[None], (full_h, full_w))[0].clamp_(0.0, 1.0).numpy()
    return maps[0], maps[1]


def _predict_tiles(net: UNet, x: torch.Tensor, *, tile: int, overlap: int, device: str) -> torch.Tensor:
    """The sigmoid maps ``(2, h, w)`` of a network-resolution image ``x`` ``(3, h, w)``, window by window."""
    mult = 2**net.depth
    _, h, w = x.shape
    m = overlap // 2
    # Per axis: one window just big enough, else windows of `tile` whose cores cover the image.
    th = min(tile, -(-(h + overlap) // mult) * mult)
    tw = min(tile, -(-(w + overlap) // mult) * mult)
    core_h, core_w = th - overlap, tw - overlap
    ny, nx = -(-h // core_h), -(-w // core_w)
    pad_b, pad_r = ny * core_h + overlap - h - m, nx * core_w + overlap - w - m
    mode = "reflect" if min(h, w) > max(m, pad_b, pad_r) else "edge"
    x = torch.from_numpy(np.pad(x.numpy(), ((0, 0), (m, pad_b), (m, pad_r)), mode=mode))
    out = torch.zeros((2, ny * core_h, nx * core_w))
    for iy in range(ny):
        for ix in range(nx):
            y0, x0 = iy * core_h, ix * core_w
            window = (
                x[:, y0 : y0 + th, x0 : x0 + tw].unsqueeze(0).to(device, memory_format=torch.channels_last)
            )
            pred = torch.sigmoid(net(window))[0, :, m : m + core_h, m : m + core_w]
            out[:, y0 : y0 + core_h, x0 : x0 + core_w] = pred.cpu()
    return out[:, :h, :w]


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


# Ruifrok-Johnston stain vectors (skimage's), in optical density: rows H, E, DAB.
_RGB_FROM_HED = torch.from_numpy(rgb_from_hed).float()
_HED_FROM_RGB = torch.from_numpy(hed_from_rgb).float()


def _augment_colour(x: torch.Tensor, gen: torch.Generator, *, stain: float = 0.3) -> torch.Tensor:
    """Random stain amounts and colour cast, in optical-density space (B, 3, H, W in [0, 1]).

    Hematoxylin and eosin are scaled independently by up to ``1 +- stain`` (staining and section
    thickness vary between labs), then each RGB channel by up to 10 % with a small offset (scanner
    colour balance). Without it a network trained on one slide's colours fails on the next.
    """
    od = -torch.log(x.clamp_min(1.0 / 255.0))
    b = x.shape[0]
    hed = torch.einsum("bchw,cs->bshw", od, _HED_FROM_RGB)
    amount = 1.0 + stain * (2 * torch.rand(b, 3, 1, 1, generator=gen) - 1)
    od = torch.einsum("bshw,sc->bchw", hed * amount, _RGB_FROM_HED)
    cast = 1.0 + 0.1 * (2 * torch.rand(b, 3, 1, 1, generator=gen) - 1)
    shift = 0.05 * (2 * torch.rand(b, 3, 1, 1, generator=gen) - 1)
    return torch.exp(-(od * cast + shift).clamp_min(0.0)).clamp(0.0, 1.0)


def _load_training_pairs(pairs, *, scale: float, patch: int) -> list[torch.Tensor]:
    """Each pair as one (5, h, w) tensor at network resolution: RGB, foreground, distance target."""
    from .readers import read_image

    stacks = []
    for img_path, mask_path in pairs:
        img = read_image(img_path)
        mask = _read_mask(mask_path, img.shape[:2])
        planes = torch.cat(
            [
                _to_tensor(img),
                torch.from_numpy(mask > 0).float()[None],
                torch.from_numpy(distance_target(mask))[None],
            ]
        )
        planes = _resize(planes[None], _scaled_size(*img.shape[:2], scale))[0]
        if min(planes.shape[1:]) < patch:
            raise InputError(
                f"{img_path}: image is smaller than patch={patch} network pixels "
                f"(after scale={scale:g}); lower patch="
            )
        stacks.append(planes)
    return stacks


def _sample_batch(stacks, weights, *, batch_size, patch, zoom, gen, stretch: float = 1.0) -> torch.Tensor:
    """Random patches (B, 5, patch, patch): pixel-weighted image choice, zoom, stretch, rot90 and flip."""
    out = []
    for _ in range(batch_size):
        k = int(torch.multinomial(weights, 1, generator=gen))
        _, h, w = stacks[k].shape
        z = zoom[0] + (zoom[1] - zoom[0]) * float(torch.rand(1, generator=gen))
        # Rows and columns magnified by z * a and z / a: round nuclei become spindles and
        # spindles rounder. No draw at stretch 1, so older recipes sample the same patches.
        a = stretch ** (2 * float(torch.rand(1, generator=gen)) - 1) if stretch > 1 else 1.0
        side_y = min(h, max(8, round(patch / (z * a))))
        side_x = min(w, max(8, round(patch / (z / a))))
        y0 = int(torch.randint(h - side_y + 1, (1,), generator=gen))
        x0 = int(torch.randint(w - side_x + 1, (1,), generator=gen))
        p = _resize(stacks[k][None, :, y0 : y0 + side_y, x0 : x0 + side_x], (patch, patch))[0]
        p = torch.rot90(p, int(torch.randint(4, (1,), generator=gen)), dims=(-2, -1))
        if bool(torch.randint(2, (1,), generator=gen)):
            p = torch.flip(p, dims=(-1,))
        out.append(p)
    return torch.stack(out)


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
    scale: float = 1.0,
    zoom: tuple[float, float] = (1.0, 1.0),
    stretch: float = 1.0,
    init: str | Path | None = None,
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
        Patch side in network pixels; a multiple of ``2**depth``. 128 px holds several nuclei
        and keeps a CPU step near 0.25 s.
    batch_size : int, optional
    steps_per_epoch : int, optional
        Default: enough patches to cover the training pixels once.
    lr : float, optional
        Adam learning rate, decayed by cosine to 5 % over training.
    width, depth : int, optional
        Network size (see :class:`UNet`); width 8, depth 3 is 121k parameters, about 0.5 MB.
    scale : float, optional
        Image-to-network resampling, stored in the checkpoint (see :class:`UNet`); 0.5 runs the
        network on half-size images, four times cheaper, for nuclei of 15-20 px.
    zoom : (float, float), optional
        Range of random magnification of each patch, so the network tolerates images a little
        finer or coarser than its training images; ``(1, 1)``: none.
    stretch : float, optional
        Largest anisotropic magnification: rows are magnified by ``a`` and columns by ``1 / a``
        (then rot90/flip), with ``log a`` uniform in ``[-log stretch, log stretch]``, so round
        nuclei also appear as spindles and thin spindles thicker; ``1``: none.
    init : str or Path, optional
        Checkpoint to start from (fine-tuning) instead of a random initialisation; it must have
        the same ``width`` and ``depth``. Its ``scale`` is replaced by ``scale``.
    seed : int, optional
        Seeds patch sampling, augmentation and initialisation.
    device : str, optional
    progress : bool, optional
        Show a tqdm progress bar.

    Returns
    -------
    history : dict
        ``loss`` (mean per epoch), ``seconds``, ``images`` and ``out``.

    Raises
    ------
    ValueError
        For a bad ``epochs``, ``patch``, ``scale``, ``zoom`` or ``stretch``.
    InputError
        For missing folders, unmatched images or unreadable masks.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1; got {epochs}")
    if patch % 2**depth or patch < 2**depth:
        raise ValueError(f"patch must be a positive multiple of {2**depth}; got {patch}")
    if not 0 < zoom[0] <= zoom[1]:
        raise ValueError(f"zoom must be (low, high) with 0 < low <= high; got {zoom}")
    if not stretch >= 1.0:
        raise ValueError(f"stretch must be >= 1 (1: no anisotropic magnification); got {stretch}")
    torch.manual_seed(seed)
    # channels-last halves the step time of these narrow convolutions on CPU
    net = UNet(width=width, depth=depth, scale=scale)
    if init is not None:
        start_net = load_unet(init)
        if (start_net.width, start_net.depth) != (width, depth):
            raise ValueError(
                f"{init}: init has width={start_net.width}, depth={start_net.depth} but training asks "
                f"for width={width}, depth={depth}; pass the same width and depth"
            )
        net.load_state_dict(start_net.state_dict())
    net = net.to(device, memory_format=torch.channels_last)
    pairs = _pairs(Path(images_dir), Path(masks_dir))
    stacks = _load_training_pairs(pairs, scale=scale, patch=patch)
    pixels = torch.tensor([float(t.shape[1] * t.shape[2]) for t in stacks])
    gen = torch.Generator().manual_seed(seed)
    if steps_per_epoch is None:
        steps_per_epoch = max(1, int(pixels.sum()) // (patch * patch * batch_size))
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
        b = _sample_batch(
            stacks, pixels, batch_size=batch_size, patch=patch, zoom=zoom, gen=gen, stretch=stretch
        )
        x = _augment_colour(b[:, :3], gen).to(device, memory_format=torch.channels_last)
        f, d = b[:, 3:4].to(device), b[:, 4:5].to(device)
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
            "config": {"width": width, "depth": depth, "scale": scale},
            "state_dict": state,
            "train": {k: v for k, v in history.items() if k != "out"}
            | {"epochs": epochs, "patch": patch, "seed": seed, "zoom": list(zoom), "stretch": stretch}
            | {"init": str(init) if init is not None else None},
        },
        out,
    )
    return history
