"""Rendering placed nuclei as an H&E-like tile: tissue compartments, stain, optics and noise.

Tiles are rendered in optical-density space (Beer-Lambert) with the Ruifrok-Johnston H&E vectors of
:data:`skimage.color.rgb_from_hed`, jittered per image, so colour deconvolution recovers the
haematoxylin channel.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import ndimage
from skimage import draw
from skimage.color import rgb_from_hed

from nucleograph.ingest.synth._placement import BOUND, Layout
from nucleograph.ingest.synth.tasks import NUCLEI_COLUMNS


def _stain_vectors(rng: np.random.Generator) -> np.ndarray:
    """Per-image haematoxylin and eosin OD vectors (rows), jittered around Ruifrok-Johnston."""
    vectors = rgb_from_hed[:2].copy()
    # eosin as measured on slides absorbs a little more blue than Ruifrok's vector; pinker, less magenta
    vectors[1] += (0.03, 0.0, 0.17)
    vectors += rng.normal(0, 0.03, vectors.shape)
    vectors = np.clip(vectors, 0.02, None)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _smooth_noise(rng, shape, sigma, dtype=np.float32) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=dtype), sigma, mode="wrap")
    return field / (field.std() + 1e-6)


def _fibres(rng, shape, n_orient: int = 6) -> np.ndarray:
    """Collagen-like texture in [0, 1]: noise filtered along a smoothly turning fibre direction."""
    h, w = shape
    noise = np.fft.rfft2(rng.standard_normal(shape, dtype=np.float32))
    fy = np.fft.fftfreq(h)[:, None].astype(np.float32)
    fx = np.fft.rfftfreq(w)[None, :].astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    direction = np.zeros(shape, np.float32)
    for _ in range(3):
        k = rng.uniform(0.5, 2.5, 2) * 2 * math.pi / np.array([w, h])
        direction += rng.uniform(0.4, 0.9) * np.cos(k[0] * xx + k[1] * yy + rng.uniform(0, 2 * math.pi))
    direction += rng.uniform(0, math.pi)
    along, across = rng.uniform(6, 12), rng.uniform(0.8, 1.4)
    out = np.zeros(shape, np.float32)
    total = np.zeros(shape, np.float32)
    for k in range(n_orient):
        phi = math.pi * k / n_orient
        fa = fx * math.cos(phi) + fy * math.sin(phi)
        fc = -fx * math.sin(phi) + fy * math.cos(phi)
        kernel = np.exp(-2 * math.pi**2 * (along**2 * fa**2 + across**2 * fc**2))
        band = np.fft.irfft2(noise * kernel, s=shape).astype(np.float32)
        band /= band.std() + 1e-6
        weight = np.cos(direction - phi) ** 8
        out += weight * band
        total += weight
    out /= total + 1e-6
    return 1 / (1 + np.exp(-1.6 * out))


def _upsample(field: np.ndarray, factor: int, shape) -> np.ndarray:
    big = np.repeat(np.repeat(field, factor, axis=0), factor, axis=1)
    return big[: shape[0], : shape[1]]


def _paint_nuclei(lay: Layout, kind: np.ndarray, rng: np.random.Generator, shape):
    """Paint each nucleus as a slightly irregular ellipse; returns label, radial and level maps."""
    h, w = shape
    mask = np.zeros(shape, np.int32)
    radial = np.zeros(shape, np.float32)
    n = lay.n
    ratio = np.where(
        kind == 0,
        rng.uniform(0.65, 0.95, n),
        np.where(kind == 1, rng.uniform(0.3, 0.5, n), rng.uniform(0.85, 1.0, n)),
    )
    theta = np.where(np.isnan(lay.theta), rng.uniform(0, math.pi, n), lay.theta)
    amp = rng.uniform(0, 0.05, (n, 2))
    phase = rng.uniform(0, 2 * math.pi, (n, 2))
    cx_out = np.zeros(n)
    cy_out = np.zeros(n)
    area = np.zeros(n, np.int64)
    for i in range(n):
        a = lay.radius[i]
        b = a * ratio[i]
        x, y = lay.x[i], lay.y[i]
        half = int(math.ceil(BOUND * a)) + 1
        x0, y0 = int(round(x)) - half, int(round(y)) - half
        x0c, y0c = max(x0, 0), max(y0, 0)
        x1c, y1c = min(x0 + 2 * half + 1, w), min(y0 + 2 * half + 1, h)
        yy, xx = np.ogrid[y0c:y1c, x0c:x1c]
        dx, dy = xx - x, yy - y
        c, s = math.cos(theta[i]), math.sin(theta[i])
        u = (c * dx + s * dy) / a
        v = (-s * dx + c * dy) / b
        rho = np.sqrt(u * u + v * v)
        ang = np.arctan2(v, u)
        rho = rho / (
            1 + amp[i, 0] * np.cos(2 * ang + phase[i, 0]) + amp[i, 1] * np.cos(3 * ang + phase[i, 1])
        )
        inside = rho <= 1.0
        rows, cols = np.nonzero(inside)
        mask[y0c:y1c, x0c:x1c][inside] = i + 1
        radial[y0c:y1c, x0c:x1c][inside] = rho[inside]
        area[i] = rows.size
        cx_out[i] = cols.mean() + x0c
        cy_out[i] = rows.mean() + y0c
    return mask, radial, cx_out, cy_out, area


def render(
    lay: Layout, kind: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Draw the tile for the nuclei placed in ``lay``.

    Parameters
    ----------
    lay : Layout
        Every nucleus placed (position, orientation, role) and the lumens.
    kind : ndarray of int8, shape (N,)
        0 epithelial, 1 spindle (fibroblast), 2 lymphocyte.
    rng : numpy.random.Generator
        Source of all rendering randomness (stroma texture, chromatin, stain, optics, noise).

    Returns
    -------
    image : ndarray of uint8, shape (H, W, 3)
    mask : ndarray of int32, shape (H, W)
        Instance labels, nucleus ``i`` (0-based) painted ``i + 1``.
    nuclei : pandas.DataFrame
        Columns :data:`~nucleograph.ingest.synth.tasks.NUCLEI_COLUMNS`; centroids and areas are
        measured on ``mask``.
    """
    h, w = lay.height, lay.width
    shape = (h, w)
    f = 4  # coarse grid for tissue compartments
    cshape = (-(-h // f), -(-w // f))
    hshape = (-(-h // 2), -(-w // 2))  # half resolution for textures

    # compartments: epithelial cytoplasm within reach of an epithelial nucleus, lumens
    seeds = np.ones(cshape, bool)
    epi = kind == 0
    seeds[
        np.clip((lay.y[epi] / f).astype(int), 0, cshape[0] - 1),
        np.clip((lay.x[epi] / f).astype(int), 0, cshape[1] - 1),
    ] = False
    reach = (1.9 * float(np.mean(lay.radius[epi])) + 4) / f if epi.any() else 0.0
    cyto = (ndimage.distance_transform_edt(seeds) <= reach).astype(np.float32)
    lumen = np.zeros(cshape, np.float32)
    for cx, cy, rx, ry, rot in lay.lumens:
        if rx > 2 and ry > 2:
            rr, cc = draw.ellipse(cy / f, cx / f, ry / f, rx / f, shape=cshape, rotation=-rot)
            lumen[rr, cc] = 1.0
    cyto = np.clip(ndimage.gaussian_filter(cyto, 1.0) * 1.6, 0, 1)
    lumen = np.clip(ndimage.gaussian_filter(lumen, 0.7) * 1.3, 0, 1)
    cyto = _upsample(cyto * (1 - lumen), 2, hshape)
    lumen = _upsample(lumen, 2, hshape)
    stroma = 1 - np.maximum(cyto, lumen)

    # stroma: collagen fibres with paler gaps and low-frequency density variation; cytoplasm
    # finely granular; lumens nearly empty
    fib = _fibres(rng, hshape)
    density = _upsample(1 + 0.15 * _smooth_noise(rng, cshape, 12), 2, hshape)
    grain = _smooth_noise(rng, hshape, 1.0)
    e_str = rng.uniform(0.45, 0.7)
    E = stroma * e_str * density * (0.25 + 1.1 * fib) + cyto * (0.26 + 0.03 * grain) + lumen * 0.03
    H = stroma * 0.05 + cyto * (0.13 + 0.025 * grain) + lumen * 0.01
    E = _upsample(ndimage.gaussian_filter(E, 0.7), 2, shape)
    H = _upsample(ndimage.gaussian_filter(H, 0.7), 2, shape)

    # nuclei: haematoxylin with chromatin clumps and a darker rim
    mask, radial, cx, cy, area = _paint_nuclei(lay, kind, rng, shape)
    level = np.where(
        kind == 0,
        rng.normal(1.15, 0.12, lay.n),
        np.where(kind == 1, rng.normal(1.45, 0.12, lay.n), rng.normal(1.75, 0.12, lay.n)),
    )
    clump = np.where(kind == 0, 0.38, 0.18)
    inside = mask > 0
    idx = mask[inside] - 1
    chrom = _upsample(_smooth_noise(rng, hshape, 0.7), 2, shape)[inside]
    r = radial[inside]
    H[inside] = np.clip(level[idx] * (0.72 + 0.45 * r**4) * (1 + clump[idx] * chrom), 0.2, None)
    E[inside] = 0.12 + 0.05 * E[inside]

    # optics: per-image stain vectors and strengths, Beer-Lambert, blur, sensor noise
    vectors = _stain_vectors(rng)
    blur = rng.uniform(0.6, 1.0)
    H = ndimage.gaussian_filter(H * rng.uniform(0.8, 1.2), blur)
    E = ndimage.gaussian_filter(E * rng.uniform(0.8, 1.2), blur)
    light = rng.uniform(232, 250) + rng.normal(0, 3, 3)
    image = np.empty((h, w, 3), np.float32)
    noise_sd = rng.uniform(2, 4)
    # one noise draw, read at three offsets: independent-looking per channel at a third of the cost
    noise = rng.standard_normal(h * w + 2 * 7919, dtype=np.float32) * noise_sd
    for ch in range(3):
        od = H * vectors[0, ch] + E * vectors[1, ch]
        image[..., ch] = light[ch] * np.exp(-od) + noise[ch * 7919 : ch * 7919 + h * w].reshape(shape)
    image = np.clip(image + 0.5, 0, 255).astype(np.uint8)

    nuclei = pd.DataFrame(
        {
            "nucleus_id": np.arange(1, lay.n + 1, dtype=np.int64),
            "centroid_x": cx,
            "centroid_y": cy,
            "area": area,
            "role": lay.role,
        },
        columns=list(NUCLEI_COLUMNS),
    )
    return image, mask, nuclei
