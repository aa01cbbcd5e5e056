"""The dashboard's Cypher, as constants (to be folded into :mod:`db.queries`). Values only as ``$params``.

Score properties are passed as ``$property`` and read with ``n[$property]``; the dashboard only ever
passes a name it read from an ``(:Explanation)`` node, never user text. A ``null`` property reads as
``null`` scores, so the same query draws an image with or without an explanation.
"""

# --- cohorts ----------------------------------------------------------------------------------------
DASH_COHORTS = (
    "MATCH (c:Cohort) "
    "RETURN c.name AS name, c.task AS task, COUNT { (c)<-[:IN_COHORT]-(:Image) } AS images, "
    "COUNT { (:ModelRun)-[:TRAINED_ON]->(c) } AS runs ORDER BY c.name"
)
# Summaries stored on each Image at ingest (n_nuclei, n_edges): reading them keeps the page fast on
# large cohorts; `nucleograph db status` and db.store.cohort_counts count the stored rows instead.
DASH_COHORT_IMAGES = (
    "MATCH (c:Cohort {name: $cohort})<-[:IN_COHORT]-(i:Image) "
    "RETURN i.id AS id, i.path AS path, i.label AS label, i.patient AS patient, i.width AS width, "
    "i.height AS height, i.detector AS detector, i.n_nuclei AS n_nuclei, i.n_edges AS n_edges, "
    "toString(i.ingested_at) AS ingested_at ORDER BY i.label, i.id"
)

# --- one image --------------------------------------------------------------------------------------
# One query, parallel lists: the nuclei (ordered by nid), their scores and the NEAR edges as nid pairs.
DASH_IMAGE_GRAPH = (
    "MATCH (i:Image {id: $image_id}) "
    "CALL (i) { "
    "  MATCH (i)-[:HAS_NUCLEUS]->(n:Nucleus) "
    "  WITH n ORDER BY n.nid "
    "  RETURN collect(n.nid) AS nids, collect(n.centroid_x) AS xs, collect(n.centroid_y) AS ys, "
    "         collect(n.area) AS areas, "
    "         collect(CASE WHEN $property IS NULL THEN null ELSE n[$property] END) AS scores "
    "} "
    "CALL (i) { "
    "  MATCH (i)-[:HAS_NUCLEUS]->(a:Nucleus)-[:NEAR]->(b:Nucleus) "
    "  RETURN collect(a.nid) AS src, collect(b.nid) AS dst "
    "} "
    "RETURN i.id AS id, i.path AS path, i.label AS label, i.patient AS patient, i.width AS width, "
    "i.height AS height, i.detector AS detector, i.n_nuclei AS n_nuclei, i.n_edges AS n_edges, "
    "nids, xs, ys, areas, scores, src, dst"
)
DASH_NUCLEUS = (
    "MATCH (n:Nucleus {uid: $uid}) "
    "RETURN n {.*, features: null} AS props, "
    "CASE WHEN $property IS NULL THEN null ELSE n[$property] END AS score, "
    "COUNT { (n)-[:NEAR]-() } AS degree"
)
DASH_NEIGHBOURS = (
    "MATCH (n:Nucleus {uid: $uid})-[r:NEAR]-(m:Nucleus) "
    "RETURN m.nid AS nid, r.dist AS dist, r.weight AS weight, m.area AS area, "
    "m.hematoxylin_od_mean AS hematoxylin, "
    "CASE WHEN $property IS NULL THEN null ELSE m[$property] END AS score "
    "ORDER BY r.dist"
)
DASH_IMAGE_PREDICTION = (
    "MATCH (r:ModelRun {id: $run_id})-[p:PREDICTED]->(i:Image {id: $image_id}) "
    "RETURN p.pred AS pred, p.prob AS prob, p.probs AS probs, p.split AS split, r.class_names AS class_names"
)

# --- runs and explanations ---------------------------------------------------------------------------
DASH_RUNS = (
    "MATCH (r:ModelRun)-[:TRAINED_ON]->(:Cohort {name: $cohort}) "
    "RETURN r {.*, created_at: toString(r.created_at)} AS run ORDER BY r.created_at DESC"
)
DASH_EXPLANATIONS = (
    "MATCH (e:Explanation)-[:OF_RUN]->(r:ModelRun)-[:TRAINED_ON]->(:Cohort {name: $cohort}) "
    "RETURN e.key AS key, e.run_id AS run_id, r.model AS model, e.method AS method, e.hops AS hops, "
    "e.property AS property, size(e.images) AS images, toString(e.updated_at) AS updated_at "
    "ORDER BY r.created_at DESC, e.method, e.hops"
)
DASH_RUN_PREDICTIONS = (
    "MATCH (r:ModelRun {id: $run_id})-[p:PREDICTED]->(i:Image) "
    "RETURN i.id AS image_id, i.label AS label, p.pred AS pred, p.prob AS prob, p.split AS split, "
    "p.fold AS fold ORDER BY i.id"
)

# --- cohort patterns --------------------------------------------------------------------------------
# Per explained image: the nuclei ranked by score, keeping the top $k and every $stride-th of the rest
# (a systematic sample over the ranking, so "all nuclei" is sampled evenly across importance). Each
# kept nucleus carries its size, shape, stain and graph position (degree; local density as the sum of
# its NEAR weights, which grows as neighbours come closer). Lists per image, not a row per nucleus.
DASH_PATTERNS = (
    "MATCH (e:Explanation {key: $key}) "
    "MATCH (c:Cohort {name: $cohort})<-[:IN_COHORT]-(i:Image) WHERE i.id IN e.images "
    "CALL (i, e) { "
    "  MATCH (i)-[:HAS_NUCLEUS]->(n:Nucleus) WHERE n[e.property] IS NOT NULL "
    "  WITH n ORDER BY n[e.property] DESC "
    "  WITH collect(n) AS ranked "
    "  WITH ranked, size(ranked) AS total, "
    "       toInteger(ceil(toFloat(size(ranked)) / $per_image)) AS stride "
    "  UNWIND range(0, total - 1) AS rank "
    "  WITH ranked[rank] AS n, rank, total, stride WHERE rank < $k OR rank % stride = 0 "
    "  RETURN total, collect(rank) AS ranks, collect(n.nid) AS nids, collect(n[e.property]) AS scores, "
    "         collect(n.area) AS area, collect(n.circularity) AS circularity, "
    "         collect(n.eccentricity) AS eccentricity, collect(n.solidity) AS solidity, "
    "         collect(n.hematoxylin_od_mean) AS hematoxylin, "
    "         collect(COUNT { (n)-[:NEAR]-() }) AS degree, "
    "         collect(reduce(s = 0.0, w IN [(n)-[r:NEAR]-() | r.weight] | s + w)) AS density, "
    "         collect(n.centroid_x / i.width) AS fx, collect(n.centroid_y / i.height) AS fy "
    "} "
    "RETURN i.id AS image_id, i.label AS label, total, ranks, nids, scores, area, circularity, eccentricity, "
    "solidity, hematoxylin, degree, density, fx, fy ORDER BY i.id"
)

# --- console library --------------------------------------------------------------------------------
# Named, parameterised neighbourhood queries for the Cypher page. Queries that return nucleus
# positions (image_id, x, y) are drawn over the image. Variable-length bounds cannot be parameters,
# so the one- and two-hop versions are separate queries.
CONSOLE_LIBRARY: dict[str, dict] = {
    "Neighbours of a nucleus (1 hop)": {
        "query": (
            "MATCH (n:Nucleus {image_id: $image_id, nid: $nid})-[r:NEAR]-(m:Nucleus) "
            "RETURN m.image_id AS image_id, m.nid AS nid, m.centroid_x AS x, m.centroid_y AS y, "
            "r.dist AS dist, r.weight AS weight, m.area AS area ORDER BY dist"
        ),
        "params": {"image_id": "", "nid": 1},
        "help": "The nuclei linked to one nucleus, nearest first.",
    },
    "Two-hop neighbourhood of a nucleus": {
        "query": (
            "MATCH (n:Nucleus {image_id: $image_id, nid: $nid}) "
            "MATCH p = (n)-[:NEAR*1..2]-(m:Nucleus) WHERE m <> n "
            "WITH m, min(length(p)) AS hops "
            "RETURN m.image_id AS image_id, m.nid AS nid, m.centroid_x AS x, m.centroid_y AS y, hops, "
            "m.area AS area ORDER BY hops, nid"
        ),
        "params": {"image_id": "", "nid": 1},
        "help": "Every nucleus within two NEAR hops, with its hop distance.",
    },
    "Most connected nuclei of an image": {
        "query": (
            "MATCH (:Image {id: $image_id})-[:HAS_NUCLEUS]->(n:Nucleus) "
            "WITH n, COUNT { (n)-[:NEAR]-() } AS degree ORDER BY degree DESC LIMIT $limit "
            "RETURN n.image_id AS image_id, n.nid AS nid, n.centroid_x AS x, n.centroid_y AS y, degree, "
            "n.area AS area"
        ),
        "params": {"image_id": "", "limit": 25},
        "help": "Hubs of the cell graph: the nuclei with the most neighbours.",
    },
    "Isolated nuclei of an image": {
        "query": (
            "MATCH (:Image {id: $image_id})-[:HAS_NUCLEUS]->(n:Nucleus) "
            "WHERE COUNT { (n)-[:NEAR]-() } <= $max_degree "
            "RETURN n.image_id AS image_id, n.nid AS nid, n.centroid_x AS x, n.centroid_y AS y, "
            "COUNT { (n)-[:NEAR]-() } AS degree, n.area AS area ORDER BY degree, nid"
        ),
        "params": {"image_id": "", "max_degree": 1},
        "help": "Nuclei with at most max_degree neighbours (sparse stroma, edges of tissue).",
    },
    "Large nuclei with crowded neighbourhoods": {
        "query": (
            "MATCH (:Image {id: $image_id})-[:HAS_NUCLEUS]->(n:Nucleus) WHERE n.area >= $min_area "
            "WITH n, COUNT { (n)-[:NEAR]-() } AS degree WHERE degree >= $min_degree "
            "RETURN n.image_id AS image_id, n.nid AS nid, n.centroid_x AS x, n.centroid_y AS y, n.area AS area, "
            "degree ORDER BY area DESC"
        ),
        "params": {"image_id": "", "min_area": 200, "min_degree": 8},
        "help": "Big nuclei packed among many neighbours, as in crowded tumour nests.",
    },
    "Nuclei in a window": {
        "query": (
            "MATCH (:Image {id: $image_id})-[:HAS_NUCLEUS]->(n:Nucleus) "
            "WHERE $x0 <= n.centroid_x <= $x1 AND $y0 <= n.centroid_y <= $y1 "
            "RETURN n.image_id AS image_id, n.nid AS nid, n.centroid_x AS x, n.centroid_y AS y, n.area AS area, "
            "n.hematoxylin_od_mean AS hematoxylin ORDER BY nid"
        ),
        "params": {"image_id": "", "x0": 0, "y0": 0, "x1": 400, "y1": 400},
        "help": "The nuclei whose centroids fall in a rectangle (pixels).",
    },
    "Triangles around a nucleus": {
        "query": (
            "MATCH (a:Nucleus {image_id: $image_id, nid: $nid})-[:NEAR]-(b:Nucleus)-[:NEAR]-(c:Nucleus)-[:NEAR]-(a) "
            "WHERE b.nid < c.nid "
            "RETURN b.image_id AS image_id, b.nid AS nid, b.centroid_x AS x, b.centroid_y AS y, c.nid AS closes_with "
            "ORDER BY nid"
        ),
        "params": {"image_id": "", "nid": 1},
        "help": "Closed triangles through one nucleus: how clustered its neighbourhood is.",
    },
    "Top-scored nuclei of an image": {
        "query": (
            "MATCH (:Image {id: $image_id})-[:HAS_NUCLEUS]->(n:Nucleus) WHERE n[$property] IS NOT NULL "
            "RETURN n.image_id AS image_id, n.nid AS nid, n.centroid_x AS x, n.centroid_y AS y, "
            "n[$property] AS score, COUNT { (n)-[:NEAR]-() } AS degree ORDER BY score DESC LIMIT $limit"
        ),
        "params": {"image_id": "", "property": "", "limit": 20},
        "help": "The most important nuclei under one explanation (property: an Explanation's property).",
    },
    "Neighbourhood of the top-scored nucleus": {
        "query": (
            "MATCH (:Image {id: $image_id})-[:HAS_NUCLEUS]->(n:Nucleus) WHERE n[$property] IS NOT NULL "
            "WITH n ORDER BY n[$property] DESC LIMIT 1 "
            "MATCH (n)-[r:NEAR]-(m:Nucleus) "
            "RETURN m.image_id AS image_id, m.nid AS nid, m.centroid_x AS x, m.centroid_y AS y, "
            "m[$property] AS score, r.dist AS dist ORDER BY score DESC"
        ),
        "params": {"image_id": "", "property": ""},
        "help": "Are the neighbours of the most important nucleus important too?",
    },
    "Images of a cohort by nucleus count": {
        "query": (
            "MATCH (:Cohort {name: $cohort})<-[:IN_COHORT]-(i:Image) "
            "RETURN i.id AS id, i.label AS label, i.n_nuclei AS nuclei, i.n_edges AS edges, "
            "round(toFloat(i.n_edges) / i.n_nuclei, 2) AS edges_per_nucleus ORDER BY nuclei DESC"
        ),
        "params": {"cohort": ""},
        "help": "Which images are dense or sparse.",
    },
}
