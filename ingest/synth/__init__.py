"""Synthetic H&E cohorts with ground-truth nuclei.

No real histology can be downloaded where nucleograph is built and tested, so this package draws
H&E-like tiles whose nuclei are known exactly: an RGB image, an instance label mask and a table of
nuclei per tile. It feeds demos, tests, detector (U-Net) training and benchmarks.

Two tasks mirror the paper (Sureka et al., arXiv 2006.09464):

``breast`` (BACH-like, default 2048 x 1536 px, about 1,400-1,750 nuclei)
    ``InSitu``: ducts (roughly elliptical) whose wall carries layered nuclei, an outer
    myoepithelial layer (role ``duct_outer``) and up to 6 inner epithelial layers (``duct_inner``),
    around an open lumen that holds a few cells (``lumen``); sparse stromal nuclei (``stroma``)
    elsewhere.
    ``Invasive``: tumour nuclei infiltrating the stroma as cords (``cord``), single files
    (``single_file``), small clusters (``cluster``) and scattered cells (``infiltrating``); no duct
    layering, no lumens.
``prostate`` (default 1024 x 1024 px, about 550-700 nuclei)
    ``Gleason3``: separate, well-formed small glands, each a ring of nuclei (``gland_boundary``)
    around an open lumen, with stroma between.
    ``Gleason4``: cribriform glands, large nests with several punched-out lumens (``cribriform``),
    fused glands, 3-6 small glands back to back with no stroma between them, neighbouring lumens
    parted by one shared wall of nuclei (``fused``), and poorly formed glands, cords and nests
    (``poorly_formed``).

Only the epithelium's arrangement separates the classes of a task, as in BACH: both classes draw
the share of the tile the epithelium occupies (its territory: the nuclei, the discs around them and
the lumens), the nuclear size, shape, chromatin and stain from the same distributions, and fill the
rest with stromal-type (smaller, spindle or lymphocyte) nuclei at the same density. So the stroma is
alike in amount and spacing in both classes; the nucleus count differs only as much as the classes'
epithelium packs differently (about 10%, bench/RESULTS.md, issue 18). Nuclei never overlap (centres
are at least the sum of their bounding radii apart, plus a gap), so a detector merges them equally
rarely in both classes.

Tiles are rendered in optical-density space (Beer-Lambert) with the Ruifrok-Johnston H&E vectors of
:data:`skimage.color.rgb_from_hed`, jittered per image, so colour deconvolution recovers the
haematoxylin channel. The scale is 0.42 microns per pixel (BACH) for both tasks.

One job per module:

``tasks``
    The tasks, their classes, roles, default sizes and table columns.
``_placement``
    :class:`~nucleograph.ingest.synth._placement.Layout`: puts pre-drawn nuclei where an
    arrangement proposes, never letting two overlap.
``_layouts``
    The arrangement of each class (ducts, cords, glands, cribriform nests).
``_render``
    Tissue compartments, stain, optics and noise around the placed nuclei.
``tile``
    :func:`synthesize_image`: one tile, from the nucleus draws to the rendered image.
``cohort``
    :func:`synthesize_cohort`: tiles, masks, nucleus tables and manifest on disk.
``slide``
    :func:`synthesize_slide` and :func:`synthesize_slide_cohort`: whole slides (pyramidal TIFFs) whose
    tissue regions are drawn tile by tile by the task's generator, labelled by their highest region class,
    with nucleus tables, region truth and a manifest.
"""

from nucleograph.ingest.synth.cohort import image_seed, synthesize_cohort
from nucleograph.ingest.synth.slide import SlideTruth, synthesize_slide, synthesize_slide_cohort
from nucleograph.ingest.synth.tasks import DEFAULT_SIZE, MANIFEST_COLUMNS, MPP, NUCLEI_COLUMNS, ROLES, TASKS
from nucleograph.ingest.synth.tile import SynthImage, synthesize_image

__all__ = [
    "DEFAULT_SIZE",
    "MANIFEST_COLUMNS",
    "MPP",
    "NUCLEI_COLUMNS",
    "ROLES",
    "TASKS",
    "SlideTruth",
    "SynthImage",
    "image_seed",
    "synthesize_cohort",
    "synthesize_image",
    "synthesize_slide",
    "synthesize_slide_cohort",
]
