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
    "nids, features, xs, ys, src, dst, weight, dist"
)
COHORT_FINGERPRINT = (
    "MATCH (c:Cohort {name: $cohort})<-[:IN_COHORT]-(i:Image) "
    "WITH i ORDER BY i.id "
    "RETURN collect(i.id + ':' + i.params_key + ':' + coalesce(i.label, '')) AS keys"
)
DELETE_COHORT_LINKS = "MATCH (:Cohort {name: $cohort})<-[r:IN_COHORT]-(:Image) DELETE r"
