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
DELETE_IMAGE_NUCLEI = (
    "MATCH (:Image {id: $image_id})-[:HAS_NUCLEUS]->(n:Nucleus) "
    "CALL (n) { DETACH DELETE n } IN TRANSACTIONS OF 10000 ROWS"
)
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
IMAGE_COUNTS = (
    "MATCH (i:Image {id: $image_id}) "
    "RETURN COUNT { (i)-[:HAS_NUCLEUS]->() } AS nuclei, "
    "COUNT { (i)-[:HAS_NUCLEUS]->()-[:NEAR]->() } AS edges"
)
COHORT_COUNTS_STORED = (
    "MATCH (c:Cohort {name: $cohort})<-[:IN_COHORT]-(i:Image) "
    "RETURN count(i) AS images, "
    "sum(COUNT { (i)-[:HAS_NUCLEUS]->() }) AS nuclei, "
    "sum(COUNT { (i)-[:HAS_NUCLEUS]->()-[:NEAR]->() }) AS edges"
)
COHORT_IMAGES = (
    "MATCH (c:Cohort {name: $cohort})<-[:IN_COHORT]-(i:Image) "
    "RETURN i.id AS id, i.path AS path, i.label AS label, i.patient AS patient, i.n_nuclei AS n_nuclei, "
    "i.n_edges AS n_edges, i.width AS width, i.height AS height, i.detector AS detector, i.params_key AS params_key "
    "ORDER BY i.id"
)
COHORTS = (
    "MATCH (c:Cohort) "
    "RETURN c.name AS name, c.task AS task, COUNT { (c)<-[:IN_COHORT]-(:Image) } AS images ORDER BY c.name"
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
DELETE_COHORT_LINKS = "MATCH (:Cohort {name: $cohort})<-[r:IN_COHORT]-(:Image) DELETE r"

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
