"""Node and edge feature keys, named once for the whole of ``gnn/``.

Every DGL graph that nucleograph builds (:func:`nucleograph.gnn.data.to_dgl`) stores its data under these keys;
layers read them as defaults and keep their own temporaries (the ``TMP_*`` keys) inside
``graph.local_scope()`` so nothing leaks into the caller's graph.
"""

#: Node features, float tensor of shape ``(N, F)`` (raw, unstandardised: models standardise).
FEAT = "feat"
#: Edge feature channels, float tensor of shape ``(E, L)``; channel ``l`` is the adjacency ``A_l``.
EFEAT = "efeat"
#: Nucleus centroid in pixels, float tensor of shape ``(N, 2)`` as ``(x, y)``.
CENTROID = "centroid"
#: The nucleus id of each node (the id it has in Neo4j), int64 tensor of shape ``(N,)``.
NID = "nucleus_id"

# Temporaries used inside ``graph.local_scope()`` by the layers.
TMP_H = "_h"
TMP_E = "_e"
TMP_M = "_m"
