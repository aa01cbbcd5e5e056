"""Occlusion explanations, by job; the public entry points are in :mod:`nucleograph.gnn.explain`.

- :mod:`.reference`: the model run on each occluded graph (the reference every optimisation is pinned
  to), "the probability without these nuclei", the shared argument checks;
- :mod:`.fast`: the exact fast path for RSF models (per-batch node updates, threads);
- :mod:`.scripted`: its per-batch tensor steps, compiled with TorchScript once per model;
- :mod:`.cache`: what the fast path computes once per image;
- :mod:`.rows`, :mod:`.balls`: the per-image and per-batch index arrays (numba loops in ``balls``);
- :mod:`.pooling`: the closed-form pooling corrections and their precision tiers.

``docs/occlusion.md`` derives the fast path.
"""
