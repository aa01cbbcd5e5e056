"""Every Cypher statement nucleograph runs, as constants. Values travel only as ``$params``.

Labels and property names never come from user text; where one must vary it is taken from an
allow-list in the calling module.
"""

# --- schema (db/schema.py applies these in order; each is idempotent) -------------------------------
SCHEMA_V1 = (
    "CREATE CONSTRAINT cohort_name IF NOT EXISTS FOR (c:Cohort) REQUIRE c.name IS UNIQUE",
    "CREATE CONSTRAINT image_id IF NOT EXISTS FOR (i:Image) REQUIRE i.id IS UNIQUE",
    "CREATE CONSTRAINT nucleus_uid IF NOT EXISTS FOR (n:Nucleus) REQUIRE n.uid IS UNIQUE",
    "CREATE CONSTRAINT model_run_id IF NOT EXISTS FOR (r:ModelRun) REQUIRE r.id IS UNIQUE",
    "CREATE INDEX image_label IF NOT EXISTS FOR (i:Image) ON (i.label)",
    "CREATE INDEX nucleus_image IF NOT EXISTS FOR (n:Nucleus) ON (n.image_id)",
)
SCHEMA_V2 = (
    "CREATE CONSTRAINT explanation_key IF NOT EXISTS FOR (e:Explanation) REQUIRE e.key IS UNIQUE",
    "CREATE INDEX model_run_cohort IF NOT EXISTS FOR (r:ModelRun) ON (r.cohort)",
)
SCHEMA_VERSION = "MATCH (m:SchemaMigration) RETURN coalesce(max(m.version), 0) AS version"
SCHEMA_RECORD = "MERGE (m:SchemaMigration {version: $version}) ON CREATE SET m.applied_at = datetime()"

# --- server facts -----------------------------------------------------------------------------------
SERVER_COMPONENTS = "CALL dbms.components() YIELD name, versions, edition RETURN name, versions, edition"
COUNTS = (
    "CALL () { MATCH (n) RETURN count(n) AS nodes } "
    "CALL () { MATCH ()-[r]->() RETURN count(r) AS relationships } "
    "RETURN nodes, relationships"
)
LABEL_COUNTS = "MATCH (n) UNWIND labels(n) AS label RETURN label, count(*) AS n ORDER BY label"

# --- ingest -----------------------------------------------------------------------------------------
IMAGE_STATE = (
    "OPTIONAL MATCH (i:Image {id: $image_id}) "
    "RETURN i.params_key AS params_key, i.n_nuclei AS n_nuclei, i.n_edges AS n_edges, "
    "EXISTS { MATCH (i)-[:IN_COHORT]->(:Cohort {name: $cohort}) } AS in_cohort"
)
MERGE_COHORT = (
    "MERGE (c:Cohort {name: $cohort}) ON CREATE SET c.created_at = datetime(), c.task = $task "
    "SET c.task = coalesce(c.task, $task)"
)
LINK_IMAGE_COHORT = (
    "MATCH (i:Image {id: $image_id}), (c:Cohort {name: $cohort}) MERGE (i)-[:IN_COHORT]->(c)"
)
# Replacing an image's graph deletes its nuclei (and their NEAR edges) in the same transaction
# that writes the new ones, so readers see the old graph or the new one, never a mix.
DELETE_IMAGE_NUCLEI_TX = "MATCH (:Image {id: $image_id})-[:HAS_NUCLEUS]->(n:Nucleus) DETACH DELETE n"
UPSERT_IMAGE = (
    "MERGE (i:Image {id: $image_id}) "
    "SET i += $props, i.ingested_at = datetime() "
    "WITH i MATCH (c:Cohort {name: $cohort}) MERGE (i)-[:IN_COHORT]->(c)"
)
CREATE_NUCLEI = (
    "MATCH (i:Image {id: $image_id}) "
    "UNWIND $rows AS row "
    "CREATE (i)-[:HAS_NUCLEUS]->(n:Nucleus) SET n = row"
)
CREATE_NEAR = (
    "UNWIND $rows AS row "
    "MATCH (a:Nucleus {uid: row[0]}), (b:Nucleus {uid: row[1]}) "
    "CREATE (a)-[:NEAR {weight: row[2], dist: row[3]}]->(b)"
)
COHORT_COUNTS_STORED = (
    "MATCH (c:Cohort {name: $cohort})<-[:IN_COHORT]-(i:Image) "
    "RETURN count(i) AS images, "
    "sum(COUNT { (i)-[:HAS_NUCLEUS]->() }) AS nuclei, "
    "sum(COUNT { (i)-[:HAS_NUCLEUS]->()-[:NEAR]->() }) AS edges"
)
COHORT_NAMES = "MATCH (c:Cohort) RETURN c.name AS name ORDER BY name"
COHORT_IMAGES = (
    "MATCH (c:Cohort {name: $cohort})<-[:IN_COHORT]-(i:Image) "
    "RETURN i.id AS id, i.path AS path, i.label AS label, i.patient AS patient, i.n_nuclei AS n_nuclei, "
    "i.n_edges AS n_edges, i.width AS width, i.height AS height, i.detector AS detector, i.params_key AS params_key "
    "ORDER BY i.id"
)
IMAGE_BY_ID = (
    "MATCH (i:Image {id: $image_id}) "
    "RETURN i.id AS id, i.path AS path, i.label AS label, i.patient AS patient, i.width AS width, "
    "i.height AS height, i.n_nuclei AS n_nuclei, i.n_edges AS n_edges, i.detector AS detector, "
    "i.feature_names AS feature_names, [(i)-[:IN_COHORT]->(c) | c.name] AS cohorts"
)
# One query per batch of images returns each graph as parallel lists (not a row per edge).
READ_GRAPHS = (
    "MATCH (i:Image) WHERE i.id IN $ids "
    "CALL (i) { "
    "  MATCH (i)-[:HAS_NUCLEUS]->(n:Nucleus) "
    "  WITH n ORDER BY n.nid "
    "  RETURN collect(n.nid) AS nids, collect(n.features) AS features, "
    "         collect(n.centroid_x) AS xs, collect(n.centroid_y) AS ys "
    "} "
    "CALL (i) { "
    "  MATCH (i)-[:HAS_NUCLEUS]->(a:Nucleus)-[r:NEAR]->(b:Nucleus) "
    "  RETURN collect(a.nid) AS src, collect(b.nid) AS dst, collect(r.weight) AS weight, collect(r.dist) AS dist "
    "} "
    "RETURN i.id AS id, i.label AS label, i.patient AS patient, i.path AS path, i.feature_names AS feature_names, "
    "i.params AS params, nids, features, xs, ys, src, dst, weight, dist"
)
COHORT_FINGERPRINT = (
    "MATCH (c:Cohort {name: $cohort})<-[:IN_COHORT]-(i:Image) "
    "WITH i ORDER BY i.id "
    "RETURN collect(i.id + ':' + i.params_key + ':' + coalesce(i.label, '')) AS keys"
)

# --- model runs -------------------------------------------------------------------------------------
CREATE_MODEL_RUN = (
    "MATCH (c:Cohort {name: $cohort}) "
    "MERGE (r:ModelRun {id: $run_id}) SET r += $props, r.created_at = coalesce(r.created_at, datetime()) "
    "MERGE (r)-[:TRAINED_ON]->(c)"
)
WRITE_PREDICTIONS = (
    "MATCH (r:ModelRun {id: $run_id}) "
    "UNWIND $rows AS row "
    "MATCH (i:Image {id: row.image_id}) "
    "MERGE (r)-[p:PREDICTED]->(i) SET p += row.props"
)
MODEL_RUNS = (
    "MATCH (r:ModelRun) WHERE $cohort IS NULL OR r.cohort = $cohort "
    "RETURN r {.*, created_at: toString(r.created_at)} AS run ORDER BY r.created_at DESC"
)
MODEL_RUN = "MATCH (r:ModelRun {id: $run_id}) RETURN r {.*, created_at: toString(r.created_at)} AS run"
RUN_PREDICTIONS = (
    "MATCH (r:ModelRun {id: $run_id})-[p:PREDICTED]->(i:Image) "
    "RETURN i.id AS image_id, i.path AS path, i.label AS label, p.pred AS pred, p.prob AS prob, "
    "p.probs AS probs, p.split AS split ORDER BY i.id"
)

# --- explanations -----------------------------------------------------------------------------------
# Scores live on the nuclei as one property per (run, method): the name is built by
# db.runs.score_property from a generated run id and an allow-listed method, never from user text.
MERGE_EXPLANATION = (
    "MATCH (r:ModelRun {id: $run_id}) "
    "MERGE (e:Explanation {key: $key}) "
    "SET e.run_id = $run_id, e.method = $method, e.hops = $hops, e.property = $property, "
    "e.updated_at = datetime(), e.images = coalesce(e.images, []) "
    "MERGE (e)-[:OF_RUN]->(r)"
)
WRITE_SCORES = (
    "UNWIND $rows AS row "
    "MATCH (n:Nucleus {uid: row[0]}) SET n[$property] = row[1]"
)
MARK_EXPLAINED = (
    "MATCH (e:Explanation {key: $key}) "
    "SET e.images = [x IN e.images WHERE NOT x IN $image_ids] + $image_ids"
)
# The images of $image_ids recorded under the explanation whose every nucleus holds a finite score
# (a re-ingested image, or a NaN an older version stored, is not "explained").
EXPLAINED_IMAGES = (
    "MATCH (e:Explanation {key: $key}) "
    "UNWIND [x IN e.images WHERE x IN $image_ids] AS image_id "
    "MATCH (i:Image {id: image_id}) "
    "WHERE NOT EXISTS { MATCH (i)-[:HAS_NUCLEUS]->(n:Nucleus) "
    "WHERE n[e.property] IS NULL OR isNaN(n[e.property]) OR abs(n[e.property]) = 1.0 / 0.0 } "
    "RETURN collect(image_id) AS image_ids"
)
EXPLANATIONS = (
    "MATCH (e:Explanation) WHERE $run_id IS NULL OR e.run_id = $run_id "
    "RETURN e.key AS key, e.run_id AS run_id, e.method AS method, e.hops AS hops, e.property AS property, "
    "size(e.images) AS images ORDER BY e.run_id, e.method"
)
IMAGE_SCORES = (
    "MATCH (i:Image {id: $image_id})-[:HAS_NUCLEUS]->(n:Nucleus) "
    "RETURN n.nid AS nid, n.centroid_x AS x, n.centroid_y AS y, n[$property] AS score ORDER BY n.nid"
)
SCORES_EXPORT = (
    "MATCH (e:Explanation {key: $key}) "
    "MATCH (i:Image)-[:HAS_NUCLEUS]->(n:Nucleus) "
    "WHERE i.id IN e.images AND ($image_ids IS NULL OR i.id IN $image_ids) "
    "RETURN i.id AS image_id, i.path AS path, i.label AS label, n.nid AS nucleus_id, "
    "n.centroid_x AS centroid_x, n.centroid_y AS centroid_y, n[e.property] AS score "
    "ORDER BY i.id, n.nid"
)
NUCLEUS_AREAS = "MATCH (:Image {id: $image_id})-[:HAS_NUCLEUS]->(n:Nucleus) RETURN n.area AS area ORDER BY n.nid"

# === dashboard ======================================================================================
# Score properties are passed as ``$property`` and read with ``n[$property]``; the dashboard only ever
# passes a name it read from an ``(:Explanation)`` node, never user text. A ``null`` property reads as
# ``null`` scores, so the same query draws an image with or without an explanation.
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
# One query, lists not rows: the nuclei as [nid, x, y, area, score] (ordered by nid; a list per nucleus
# because collect() drops nulls and a missing score must stay a hole) and the NEAR edges as nid pairs.
DASH_IMAGE_GRAPH = (
    "MATCH (i:Image {id: $image_id}) "
    "CALL (i) { "
    "  MATCH (i)-[:HAS_NUCLEUS]->(n:Nucleus) "
    "  WITH n ORDER BY n.nid "
    "  RETURN collect([n.nid, n.centroid_x, n.centroid_y, n.area, "
    "                  CASE WHEN $property IS NULL THEN null ELSE n[$property] END]) AS nuclei "
    "} "
    "CALL (i) { "
    "  MATCH (i)-[:HAS_NUCLEUS]->(a:Nucleus)-[:NEAR]->(b:Nucleus) "
    "  RETURN collect(a.nid) AS src, collect(b.nid) AS dst "
    "} "
    "RETURN i.id AS id, i.path AS path, i.label AS label, i.patient AS patient, i.width AS width, "
    "i.height AS height, i.detector AS detector, i.n_nuclei AS n_nuclei, i.n_edges AS n_edges, "
    "nuclei, src, dst"
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
# its NEAR weights, which grows as neighbours come closer). A list per nucleus inside one row per image
# (PATTERN_COLUMNS names its entries); collect() would drop null measurements from parallel lists, and a
# missing measurement comes back as $nan (pass float('nan')) so the lists load straight into numpy.
PATTERN_COLUMNS = ("rank", "nid", "score", "area", "circularity", "eccentricity", "solidity", "hematoxylin",
                   "degree", "density", "fx", "fy")
DASH_PATTERNS = (
    "MATCH (e:Explanation {key: $key}) "
    "WITH e.property AS prop, e.images AS explained "
    "MATCH (c:Cohort {name: $cohort})<-[:IN_COHORT]-(i:Image) WHERE i.id IN explained "
    "CALL (i, prop) { "
    "  MATCH (i)-[:HAS_NUCLEUS]->(n:Nucleus) WHERE n[prop] IS NOT NULL "
    "  WITH i, prop, n ORDER BY n[prop] DESC "
    "  WITH i, prop, collect(n) AS ranked "
    "  WITH i, prop, ranked, size(ranked) AS total, "
    "       toInteger(ceil(toFloat(size(ranked)) / $per_image)) AS stride "
    "  UNWIND range(0, total - 1) AS rank "
    "  WITH i, prop, ranked[rank] AS n, rank, total WHERE rank < $k OR rank % stride = 0 "
    "  RETURN total, collect([rank, n.nid, n[prop], coalesce(n.area, $nan), coalesce(n.circularity, $nan), "
    "         coalesce(n.eccentricity, $nan), coalesce(n.solidity, $nan), coalesce(n.hematoxylin_od_mean, $nan), "
    "         COUNT { (n)-[:NEAR]-() }, "
    "         reduce(s = 0.0, w IN [(n)-[r:NEAR]-() | r.weight] | s + w), "
    "         n.centroid_x / i.width, n.centroid_y / i.height]) AS nuclei "
    "} "
    "RETURN i.id AS image_id, i.label AS label, total, nuclei ORDER BY i.id"
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
