"""Every Cypher statement nucleograph runs, as constants. Values travel only as ``$params``.

Labels and property names never come from user text; where one must vary it is taken from an
allow-list in the calling module.

Explanation scores: one Nucleus property per (run, method[, hops, output]), named in the
Explanation's ``property``. Occlusion records its ``output``: ``logodds`` (the drop of the explained
class's log-odds, ``imp_<run>_occlusion_k<h>_logodds``) or ``prob`` (the drop of its probability,
``imp_<run>_occlusion_k<h>``: the name and meaning every occlusion score had before outputs existed).
An occlusion Explanation written then has no ``output`` and is read as ``prob`` (:data:`LEGACY_OUTPUT`,
:data:`EXPLANATION_OUTPUT`); nothing stored is renamed or rewritten, so no migration is needed.
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
# v3: cohorts independent of each other (issue 16). The label, patient, path and meta move from the
# shared Image onto its IN_COHORT membership; each Image's graph becomes a (:Segmentation) that the
# membership names; explanations record the segmentations they scored (EXPLAINS) instead of image ids.
# Each data statement runs in batches of its own transactions and only touches what is still in the
# old shape, so an interrupted migration is completed by running it again.
SCHEMA_V3 = (
    "CREATE CONSTRAINT segmentation_key IF NOT EXISTS FOR (s:Segmentation) REQUIRE s.key IS UNIQUE",
    "CREATE INDEX nucleus_segmentation IF NOT EXISTS FOR (n:Nucleus) ON (n.segmentation, n.nid)",
    "MATCH (i:Image) WHERE i.params_key IS NOT NULL AND NOT EXISTS { (i)-[:HAS_SEGMENTATION]->() } "
    "CALL (i) { "
    "  MERGE (s:Segmentation {key: i.id + ':' + i.params_key}) "
    "  SET s.image_id = i.id, s.params_key = i.params_key, s.detector = i.detector, s.params = i.params, "
    "      s.n_nuclei = i.n_nuclei, s.n_edges = i.n_edges, s.feature_names = i.feature_names, "
    "      s.task = i.task, s.ingested_at = i.ingested_at "
    "  MERGE (i)-[:HAS_SEGMENTATION]->(s) "
    "} IN TRANSACTIONS OF 1000 ROWS",
    "MATCH (i:Image)-[r:HAS_NUCLEUS]->(n:Nucleus) "
    "CALL (i, r, n) { "
    "  MATCH (i)-[:HAS_SEGMENTATION]->(s:Segmentation {key: i.id + ':' + i.params_key}) "
    "  CREATE (s)-[:HAS_NUCLEUS]->(n) "
    "  SET n.segmentation = s.key, n.uid = s.key + ':' + toString(n.nid) "
    "  DELETE r "
    "} IN TRANSACTIONS OF 10000 ROWS",
    "MATCH (i:Image)-[m:IN_COHORT]->(:Cohort) WHERE m.segmentation IS NULL AND i.params_key IS NOT NULL "
    "CALL (i, m) { "
    "  SET m.label = i.label, m.patient = i.patient, m.path = i.path, m.meta = i.meta, "
    "      m.segmentation = i.id + ':' + i.params_key, m.added_at = i.ingested_at "
    "} IN TRANSACTIONS OF 1000 ROWS",
    # an image listed as explained whose nuclei hold no score (re-ingested since) becomes stale
    "MATCH (e:Explanation) WHERE e.images IS NOT NULL "
    "UNWIND e.images AS image_id "
    "MATCH (:Image {id: image_id})-[:HAS_SEGMENTATION]->(s:Segmentation) "
    "WITH e, image_id, s, EXISTS { MATCH (s)-[:HAS_NUCLEUS]->(n:Nucleus) WHERE n[e.property] IS NOT NULL } AS scored "
    "FOREACH (_ IN CASE WHEN scored THEN [1] ELSE [] END | MERGE (e)-[:EXPLAINS]->(s)) "
    "SET e.stale_images = CASE WHEN scored THEN coalesce(e.stale_images, []) "
    "ELSE [x IN coalesce(e.stale_images, []) WHERE x <> image_id] + image_id END",
    "MATCH (e:Explanation) WHERE e.images IS NOT NULL "
    "SET e.stale_images = coalesce(e.stale_images, []) REMOVE e.images",
    "MATCH (i:Image) WHERE i.params_key IS NOT NULL "
    "CALL (i) { "
    "  REMOVE i.label, i.patient, i.path, i.params_key, i.detector, i.params, i.n_nuclei, i.n_edges, "
    "         i.feature_names, i.meta, i.task "
    "} IN TRANSACTIONS OF 1000 ROWS",
    "DROP INDEX image_label IF EXISTS",
)
# v4: slides (issue 15). Each nucleus gets its centroid as a cartesian point, ``pos``, under a point
# index, so a window (ROI, viewport) is one indexed query (WINDOW_NUCLEI). Stored nuclei get theirs in
# batches (only those still without one: an interrupted migration is completed by running it again);
# the index is created after them (one bulk population, not 600k index updates) and awaited.
SCHEMA_V4 = (
    "MATCH (n:Nucleus) WHERE n.pos IS NULL AND n.centroid_x IS NOT NULL AND n.centroid_y IS NOT NULL "
    "CALL (n) { SET n.pos = point({x: n.centroid_x, y: n.centroid_y}) } IN TRANSACTIONS OF 10000 ROWS",
    "CREATE POINT INDEX nucleus_pos IF NOT EXISTS FOR (n:Nucleus) ON (n.pos)",
    "CALL db.awaitIndex('nucleus_pos', 3600)",
    # since v3 nuclei are read by segmentation (nucleus_segmentation), never by image id: an index that
    # only slowed every nucleus written
    "DROP INDEX nucleus_image IF EXISTS",
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
# The data model (schema v4):
#   (:Image {id})                      the bytes (content hash) and what they are: width, height, mpp
#   (:Image)-[:HAS_SEGMENTATION]->(:Segmentation {key, params_key, detector, params, n_nuclei, ...})
#   (:Segmentation)-[:HAS_NUCLEUS]->(:Nucleus {uid, segmentation, image_id, nid, pos, ...})-[:NEAR]->(:Nucleus)
#   (:Image)-[:IN_COHORT {label, patient, path, meta, segmentation}]->(:Cohort)
# A cohort's membership holds the label, patient and path and names the segmentation the cohort uses,
# so cohorts sharing an image never change each other; an image may carry several segmentations.
# Segmentation.status (v4): 'writing' while a large graph goes in over many transactions, 'deleting'
# while one is removed in batches, 'complete' (or absent: stored before v4) otherwise. Readers reach
# nuclei through a membership, set only on a complete segmentation (the same transaction completes it);
# the few reads that start elsewhere (EXPLAINS, HAS_SEGMENTATION) keep to complete ones.
IMAGE_STATE = (
    "OPTIONAL MATCH (i:Image {id: $image_id}) "
    "OPTIONAL MATCH (s:Segmentation {key: $segmentation}) "
    "OPTIONAL MATCH (i)-[m:IN_COHORT]->(:Cohort {name: $cohort}) "
    "RETURN s IS NOT NULL AND coalesce(s.status, 'complete') = 'complete' AS has_segmentation, "
    "s.n_nuclei AS n_nuclei, s.n_edges AS n_edges, "
    "m IS NOT NULL AS in_cohort, m.segmentation AS cohort_segmentation, m.label AS label, m.path AS path, "
    "m.patient AS patient, "
    "[(i)-[:HAS_SEGMENTATION]->(t:Segmentation) WHERE coalesce(t.status, 'complete') <> 'complete' | "
    " t {.key, .status, .writer, .n_nuclei, idle_s: duration.inSeconds(t.heartbeat, datetime()).seconds}] AS unfinished"
)
MERGE_COHORT = (
    "MERGE (c:Cohort {name: $cohort}) ON CREATE SET c.created_at = datetime(), c.task = $task "
    "SET c.task = coalesce(c.task, $task)"
)
MERGE_IMAGE = (
    "MERGE (i:Image {id: $image_id}) ON CREATE SET i.created_at = datetime() SET i += $props"
)
CREATE_SEGMENTATION = (
    "MATCH (i:Image {id: $image_id}) "
    "CREATE (i)-[:HAS_SEGMENTATION]->(s:Segmentation {key: $segmentation}) "
    "SET s += $props, s.image_id = $image_id, s.ingested_at = datetime()"
)
# The membership: label, patient, path and the segmentation the cohort uses (set on every ingest).
SET_MEMBERSHIP = (
    "MATCH (i:Image {id: $image_id}), (c:Cohort {name: $cohort}) "
    "MERGE (i)-[m:IN_COHORT]->(c) ON CREATE SET m.added_at = datetime() "
    "SET m += $props, m.segmentation = $segmentation, m.updated_at = datetime()"
)
# After a cohort moved to another segmentation of an image: explanations of that cohort's runs that
# scored the old nuclei list the image as stale; the old segmentation is deleted (nuclei, edges and
# the scores on them) when no cohort uses it any more, and every explanation that scored it is stale.
MARK_STALE_FOR_COHORT = (
    "MATCH (e:Explanation)-[:EXPLAINS]->(:Segmentation {key: $old}) "
    "WHERE EXISTS { MATCH (e)-[:OF_RUN]->(:ModelRun)-[:TRAINED_ON]->(:Cohort {name: $cohort}) } "
    "OR NOT EXISTS { MATCH (:Image {id: $image_id})-[:IN_COHORT {segmentation: $old}]->() } "
    "SET e.stale_images = [x IN coalesce(e.stale_images, []) WHERE x <> $image_id] + $image_id"
)
# Back on nuclei an explanation of the cohort's runs scored (still stored: another cohort kept them).
UNSTALE_FOR_COHORT = (
    "MATCH (e:Explanation)-[:EXPLAINS]->(:Segmentation {key: $segmentation}) "
    "WHERE EXISTS { MATCH (e)-[:OF_RUN]->(:ModelRun)-[:TRAINED_ON]->(:Cohort {name: $cohort}) } "
    "SET e.stale_images = [x IN coalesce(e.stale_images, []) WHERE x <> $image_id]"
)
# Unused, it becomes 'deleting' (invisible) in the membership's transaction; db.store then deletes
# it in bounded batches (DELETE_SEGMENTATION_NUCLEI until none are left, then DELETE_SEGMENTATION_NODE):
# one DETACH DELETE of a slide's graph would outgrow the transaction memory pool.
RETIRE_UNUSED_SEGMENTATION = (
    "MATCH (s:Segmentation {key: $old}) "
    "WHERE coalesce(s.status, 'complete') = 'complete' "
    "AND NOT EXISTS { MATCH (:Image {id: $image_id})-[:IN_COHORT {segmentation: $old}]->() } "
    "SET s.status = 'deleting' RETURN s.key AS key, s.n_nuclei AS n_nuclei"
)
# A 'writing' segmentation whose writer is gone (db.store decides): deleted like a retired one.
ABANDON_SEGMENTATION = (
    "MATCH (s:Segmentation {key: $segmentation}) WHERE s.status = 'writing' AND s.writer = $writer "
    "SET s.status = 'deleting' REMOVE s.writer, s.heartbeat RETURN s.key AS key, s.n_nuclei AS n_nuclei"
)
DELETE_SEGMENTATION_NUCLEI = (
    "MATCH (:Segmentation {key: $segmentation, status: 'deleting'})-[:HAS_NUCLEUS]->(n:Nucleus) "
    "WITH n LIMIT $limit DETACH DELETE n RETURN count(n) AS deleted"
)
DELETE_SEGMENTATION_NODE = (
    "MATCH (s:Segmentation {key: $segmentation, status: 'deleting'}) "
    "WHERE NOT EXISTS { (s)-[:HAS_NUCLEUS]->() } DETACH DELETE s"
)
# ``pos`` (v4): the centroid as a cartesian point, under the point index nucleus_pos.
CREATE_NUCLEI = (
    "MATCH (s:Segmentation {key: $segmentation}) "
    "UNWIND $rows AS row "
    "CREATE (s)-[:HAS_NUCLEUS]->(n:Nucleus) SET n = row, n.pos = point({x: row.centroid_x, y: row.centroid_y})"
)
CREATE_NEAR = (
    "UNWIND $rows AS row "
    "MATCH (a:Nucleus {uid: row[0]}), (b:Nucleus {uid: row[1]}) "
    "CREATE (a)-[:NEAR {weight: row[2], dist: row[3]}]->(b)"
)
# A graph too large for one transaction (db.store.store_image_graph) goes in over many: its segmentation
# is created 'writing' and names its writer (host:pid, and a Dask task's worker: db.store.Writer); every
# batch's transaction first checks that it is still so (0 rows: another ingest took it over as abandoned)
# and records a heartbeat; the last one completes it together with the membership.
TOUCH_SEGMENTATION = (
    "MATCH (s:Segmentation {key: $segmentation}) WHERE s.status = 'writing' AND s.writer = $writer "
    "SET s.heartbeat = datetime() RETURN count(s) AS n"
)
COMPLETE_SEGMENTATION = (
    "MATCH (s:Segmentation {key: $segmentation}) WHERE s.status = 'writing' AND s.writer = $writer "
    "SET s.status = 'complete', s.ingested_at = datetime() REMOVE s.writer, s.heartbeat RETURN count(s) AS n"
)
# A cohort's image with the segmentation it uses: every read below starts from this pattern.
COHORT_COUNTS_STORED = (
    "MATCH (c:Cohort {name: $cohort})<-[m:IN_COHORT]-(:Image) "
    "OPTIONAL MATCH (s:Segmentation {key: m.segmentation}) "
    "RETURN count(m) AS images, "
    "sum(COUNT { (s)-[:HAS_NUCLEUS]->() }) AS nuclei, "
    "sum(COUNT { (s)-[:HAS_NUCLEUS]->()-[:NEAR]->() }) AS edges"
)
COHORT_NAMES = "MATCH (c:Cohort) RETURN c.name AS name ORDER BY name"
COHORT_IMAGES = (
    "MATCH (c:Cohort {name: $cohort})<-[m:IN_COHORT]-(i:Image) "
    "OPTIONAL MATCH (s:Segmentation {key: m.segmentation}) "
    "RETURN i.id AS id, m.path AS path, m.label AS label, m.patient AS patient, s.n_nuclei AS n_nuclei, "
    "s.n_edges AS n_edges, i.width AS width, i.height AS height, s.detector AS detector, "
    "s.params_key AS params_key, m.segmentation AS segmentation, s.feature_names AS feature_names "
    "ORDER BY i.id"
)
# An image by id, with its memberships (path and label per cohort) and its segmentations.
IMAGE_BY_ID = (
    "MATCH (i:Image {id: $image_id}) "
    "OPTIONAL MATCH (i)-[m:IN_COHORT]->(c:Cohort) WHERE $cohort IS NULL OR c.name = $cohort "
    "WITH i, m, c ORDER BY c.name "
    "WITH i, collect(m {cohort: c.name, .label, .patient, .path, .segmentation}) AS memberships "
    "WITH i, memberships, head(memberships) AS first "
    "OPTIONAL MATCH (s:Segmentation {key: first.segmentation}) "
    "RETURN i.id AS id, first.path AS path, first.label AS label, first.patient AS patient, "
    "i.width AS width, i.height AS height, s.n_nuclei AS n_nuclei, s.n_edges AS n_edges, "
    "s.detector AS detector, s.feature_names AS feature_names, first.segmentation AS segmentation, "
    "[x IN memberships | x.cohort] AS cohorts, memberships, "
    "[(i)-[:HAS_SEGMENTATION]->(t) WHERE coalesce(t.status, 'complete') = 'complete' | t.key] AS segmentations"
)
# One query per batch of images returns each graph as parallel lists (not a row per edge).
READ_GRAPHS = (
    "MATCH (:Cohort {name: $cohort})<-[m:IN_COHORT]-(i:Image) WHERE i.id IN $ids "
    "MATCH (s:Segmentation {key: m.segmentation}) "
    "CALL (s) { "
    "  MATCH (s)-[:HAS_NUCLEUS]->(n:Nucleus) "
    "  WITH n ORDER BY n.nid "
    "  RETURN collect(n.nid) AS nids, collect(n.features) AS features, "
    "         collect(n.centroid_x) AS xs, collect(n.centroid_y) AS ys "
    "} "
    "CALL (s) { "
    "  MATCH (s)-[:HAS_NUCLEUS]->(a:Nucleus)-[r:NEAR]->(b:Nucleus) "
    "  RETURN collect(a.nid) AS src, collect(b.nid) AS dst, collect(r.weight) AS weight, collect(r.dist) AS dist "
    "} "
    "RETURN i.id AS id, m.label AS label, m.patient AS patient, m.path AS path, s.key AS segmentation, "
    "s.feature_names AS feature_names, s.params AS params, nids, features, xs, ys, src, dst, weight, dist"
)
COHORT_FINGERPRINT = (
    "MATCH (c:Cohort {name: $cohort})<-[m:IN_COHORT]-(i:Image) "
    "WITH i, m ORDER BY i.id "
    "RETURN collect(i.id + ':' + m.segmentation + ':' + coalesce(m.label, '') + ':' + coalesce(m.patient, '')) "
    "AS keys"
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
    "OPTIONAL MATCH (i)-[m:IN_COHORT]->(:Cohort {name: r.cohort}) "
    "RETURN i.id AS image_id, m.path AS path, m.label AS label, p.pred AS pred, p.prob AS prob, "
    "p.probs AS probs, p.split AS split, p.fold AS fold ORDER BY i.id"
)

# --- explanations -----------------------------------------------------------------------------------
# Scores live on the nuclei as one property per (run, method, hops, output): the name is built by
# db.runs.score_property from a generated run id and allow-listed names, never from user text.
# ``output`` (occlusion only) says what the scores measure: "logodds" or "prob" (see the module's
# docstring); readers return it as EXPLANATION_OUTPUT does, so a legacy occlusion reads as "prob".
LEGACY_OUTPUT = "prob"
EXPLANATION_OUTPUT = (
    "coalesce(e.output, CASE WHEN e.method = 'occlusion' THEN '" + LEGACY_OUTPUT + "' END) AS output"
)
# (:Explanation)-[:EXPLAINS]->(:Segmentation) records which nuclei were scored; ``stale_images`` lists
# the images whose nuclei the run's cohort replaced after they were scored (explain them again).
MERGE_EXPLANATION = (
    "MATCH (r:ModelRun {id: $run_id}) "
    "MERGE (e:Explanation {key: $key}) "
    "SET e.run_id = $run_id, e.method = $method, e.hops = $hops, e.output = $output, e.property = $property, "
    "e.updated_at = datetime(), e.stale_images = coalesce(e.stale_images, []) "
    "MERGE (e)-[:OF_RUN]->(r)"
)
WRITE_SCORES = (
    "UNWIND $rows AS row "
    "MATCH (n:Nucleus {uid: row[0]}) SET n[$property] = row[1]"
)
# A slide's scores go in over several transactions: until the last, its segmentation is not explained
# (a run killed part-way leaves it to be explained again, not a mix of two runs' scores).
UNMARK_EXPLAINED = (
    "MATCH (:Explanation {key: $key})-[r:EXPLAINS]->(:Segmentation {key: $segmentation}) DELETE r"
)
# The image's segmentation is now explained, and the image is no longer stale.
MARK_EXPLAINED = (
    "MATCH (e:Explanation {key: $key}), (s:Segmentation {key: $segmentation}) "
    "MERGE (e)-[:EXPLAINS]->(s) "
    "SET e.stale_images = [x IN coalesce(e.stale_images, []) WHERE x <> s.image_id]"
)
# The images of $image_ids whose segmentation in the run's cohort the explanation scored, every
# nucleus with a finite score (a re-ingested image, or a NaN an older version stored, is not "explained").
EXPLAINED_IMAGES = (
    "MATCH (e:Explanation {key: $key})-[:OF_RUN]->(:ModelRun)-[:TRAINED_ON]->(c:Cohort) "
    "MATCH (c)<-[m:IN_COHORT]-(i:Image) WHERE i.id IN $image_ids "
    "MATCH (e)-[:EXPLAINS]->(s:Segmentation {key: m.segmentation}) "
    "WHERE NOT EXISTS { MATCH (s)-[:HAS_NUCLEUS]->(n:Nucleus) "
    "WHERE n[e.property] IS NULL OR isNaN(n[e.property]) OR abs(n[e.property]) = 1.0 / 0.0 } "
    "RETURN collect(i.id) AS image_ids"
)
EXPLANATIONS = (
    "MATCH (e:Explanation) WHERE $run_id IS NULL OR e.run_id = $run_id "
    "RETURN e.key AS key, e.run_id AS run_id, e.method AS method, e.hops AS hops, " + EXPLANATION_OUTPUT + ", "
    "e.property AS property, COUNT { (e)-[:EXPLAINS]->() } AS images, coalesce(e.stale_images, []) AS stale_images "
    "ORDER BY e.run_id, e.method"
)
# `nucleograph evaluate`: the latest evaluation's summary (JSON text) on the explanation it evaluated.
SET_EVALUATION = (
    "MATCH (e:Explanation {key: $key}) SET e.evaluation = $evaluation, e.evaluated_at = datetime() "
    "RETURN e.key AS key"
)
# One image's nuclei (the segmentation its cohort uses) with their score under $property.
IMAGE_SCORES = (
    "MATCH (:Cohort {name: $cohort})<-[m:IN_COHORT]-(:Image {id: $image_id}) "
    "MATCH (:Segmentation {key: m.segmentation})-[:HAS_NUCLEUS]->(n:Nucleus) "
    "RETURN n.nid AS nid, n.centroid_x AS x, n.centroid_y AS y, n[$property] AS score ORDER BY n.nid"
)
# The explanation's scores on the nuclei they were computed on, with the image's path and label in
# the run's cohort; ``current`` is false where the cohort has since moved to other nuclei.
SCORES_EXPORT = (
    "MATCH (e:Explanation {key: $key})-[:OF_RUN]->(:ModelRun)-[:TRAINED_ON]->(c:Cohort) "
    "MATCH (e)-[:EXPLAINS]->(s:Segmentation)<-[:HAS_SEGMENTATION]-(i:Image) "
    "WHERE ($image_ids IS NULL OR i.id IN $image_ids) AND coalesce(s.status, 'complete') = 'complete' "
    "OPTIONAL MATCH (i)-[m:IN_COHORT]->(c) "
    "MATCH (s)-[:HAS_NUCLEUS]->(n:Nucleus) "
    "RETURN i.id AS image_id, m.path AS path, m.label AS label, n.nid AS nucleus_id, "
    "n.centroid_x AS centroid_x, n.centroid_y AS centroid_y, n[e.property] AS score, "
    "coalesce(m.segmentation = s.key, false) AS current "
    "ORDER BY i.id, n.nid"
)
# `nucleograph export`: the images an explanation scored (through EXPLAINS, so the nuclei the scores were
# computed on), then one image's nuclei as lists [nid, x, y, type, outline, features, score, source_id].
EXPORT_IMAGES = (
    "MATCH (e:Explanation {key: $key})-[:OF_RUN]->(:ModelRun)-[:TRAINED_ON]->(c:Cohort) "
    "MATCH (e)-[:EXPLAINS]->(s:Segmentation)<-[:HAS_SEGMENTATION]-(i:Image) "
    "WHERE ($image_ids IS NULL OR i.id IN $image_ids) AND coalesce(s.status, 'complete') = 'complete' "
    "OPTIONAL MATCH (i)-[m:IN_COHORT]->(c) "
    "RETURN i.id AS image_id, m.path AS path, m.label AS label, i.width AS width, i.height AS height, "
    "s.key AS segmentation, s.detector AS detector, s.feature_names AS feature_names, e.property AS property, "
    "e.method AS method, e.hops AS hops, " + EXPLANATION_OUTPUT + ", "
    "coalesce(m.segmentation = s.key, false) AS current "
    "ORDER BY image_id"
)
EXPORT_NUCLEI = (
    "MATCH (e:Explanation {key: $key})-[:EXPLAINS]->(s:Segmentation {key: $segmentation}) "
    "CALL (e, s) { "
    "  MATCH (s)-[:HAS_NUCLEUS]->(n:Nucleus) "
    "  WITH n ORDER BY n.nid "
    "  RETURN collect([n.nid, n.centroid_x, n.centroid_y, n.type, n.outline, n.features, n[e.property], "
    "                  n.source_id]) AS nuclei "
    "} "
    "RETURN nuclei"
)
NUCLEUS_AREAS = (
    "MATCH (:Cohort {name: $cohort})<-[m:IN_COHORT]-(:Image {id: $image_id}) "
    "MATCH (:Segmentation {key: m.segmentation})-[:HAS_NUCLEUS]->(n:Nucleus) "
    "RETURN n.area AS area ORDER BY n.nid"
)
# The nuclei of a window (ROI, viewport; bounds inclusive, pixels) of the cohort's segmentation of an
# image, from the point index (v4; the hint keeps the planner off the per-segmentation index, which would
# read every nucleus of a slide), and the NEAR edges with both ends inside, as lists. Nuclei are
# [nid, x, y, score] (a list each: collect() would drop a null score), ordered by nid.
WINDOW_NUCLEI = (
    "MATCH (:Cohort {name: $cohort})<-[m:IN_COHORT]-(:Image {id: $image_id}) "
    "MATCH (s:Segmentation {key: m.segmentation}) "
    "CALL (m) { "
    "  MATCH (n:Nucleus) USING INDEX n:Nucleus(pos) "
    "  WHERE point.withinBBox(n.pos, point({x: $x0, y: $y0}), point({x: $x1, y: $y1})) "
    "  AND n.segmentation = m.segmentation "
    "  WITH n ORDER BY n.nid "
    "  RETURN collect([n.nid, n.centroid_x, n.centroid_y, "
    "                  CASE WHEN $property IS NULL THEN null ELSE n[$property] END]) AS nuclei, "
    "         collect(n.features) AS features, collect(n) AS inside "
    "} "
    "CALL (inside) { "
    "  UNWIND inside AS a "
    # b unlabelled and filtered after WITH: expanded from a (a label would let the planner scan the
    # point index for b and join, reading every nucleus of the store per window nucleus)
    "  MATCH (a)-[r:NEAR]->(b) "
    "  WITH a, r, b WHERE point.withinBBox(b.pos, point({x: $x0, y: $y0}), point({x: $x1, y: $y1})) "
    "  RETURN collect(a.nid) AS src, collect(b.nid) AS dst, collect(r.weight) AS weight, collect(r.dist) AS dist "
    "} "
    "RETURN s.key AS segmentation, s.feature_names AS feature_names, nuclei, features, src, dst, weight, dist"
)
# An image's nuclei (the segmentation the cohort uses) counted per square cell of $cell pixels, as parallel
# lists in one row: where the tissue is, so ROIs can be sampled without reading the whole graph; with the
# image's size and the segmentation's params (its threshold_px builds the ROI graphs' edge channels).
NUCLEUS_DENSITY = (
    "MATCH (:Cohort {name: $cohort})<-[m:IN_COHORT]-(i:Image {id: $image_id}) "
    "MATCH (s:Segmentation {key: m.segmentation}) "
    "CALL (s) { "
    "  MATCH (s)-[:HAS_NUCLEUS]->(n:Nucleus) "
    "  WITH toInteger(floor(n.centroid_x / $cell)) AS cx, toInteger(floor(n.centroid_y / $cell)) AS cy, "
    "       count(*) AS k "
    "  RETURN collect(cx) AS xs, collect(cy) AS ys, collect(k) AS counts "
    "} "
    "RETURN i.width AS width, i.height AS height, s.params AS params, xs, ys, counts"
)
# The slide viewer (issue 15 item 5). An image's nuclei counted per square cell of $cell pixels, with the
# count and sum of their scores under $property (null: none), as parallel lists over the non-empty cells.
# Bounded by the number of cells (the caller picks $cell from the image's size), not by the nuclei.
NUCLEUS_GRID = (
    "MATCH (:Cohort {name: $cohort})<-[m:IN_COHORT]-(i:Image {id: $image_id}) "
    "MATCH (s:Segmentation {key: m.segmentation}) "
    "CALL (s) { "
    "  MATCH (s)-[:HAS_NUCLEUS]->(n:Nucleus) "
    "  WITH toInteger(floor(n.centroid_x / $cell)) AS cx, toInteger(floor(n.centroid_y / $cell)) AS cy, "
    "       CASE WHEN $property IS NULL THEN null ELSE n[$property] END AS score "
    "  WITH cx, cy, count(*) AS k, count(score) AS scored, sum(score) AS total "
    "  RETURN collect(cx) AS xs, collect(cy) AS ys, collect(k) AS counts, collect(scored) AS scored, "
    "         collect(total) AS totals "
    "} "
    "RETURN i.width AS width, i.height AS height, m.path AS path, s.n_nuclei AS n_nuclei, "
    "xs, ys, counts, scored, totals"
)
# The 99th percentile of |score| over an image's nuclei (null without scores): the heat map's scale, the
# same in every viewport (render's relative scale, taken over the whole image).
SCORE_SCALE = (
    "MATCH (:Cohort {name: $cohort})<-[m:IN_COHORT]-(:Image {id: $image_id}) "
    "MATCH (:Segmentation {key: m.segmentation})-[:HAS_NUCLEUS]->(n:Nucleus) "
    "WHERE n[$property] IS NOT NULL "
    "RETURN percentileCont(abs(n[$property]), 0.99) AS p99, max(abs(n[$property])) AS top, count(*) AS scored"
)
# $q + 1 evenly spaced order statistics of an image's scores (the lowest first, the highest last): a
# slide's rank scale, one for all its viewports
SCORE_QUANTILES = (
    "MATCH (:Cohort {name: $cohort})<-[m:IN_COHORT]-(:Image {id: $image_id}) "
    "MATCH (:Segmentation {key: m.segmentation})-[:HAS_NUCLEUS]->(n:Nucleus) "
    "WHERE n[$property] IS NOT NULL "
    "WITH n[$property] AS s ORDER BY s "
    "WITH collect(s) AS scores "
    "WHERE size(scores) > 0 "
    "RETURN [i IN range(0, $q) | scores[toInteger(round(toFloat(i) * (size(scores) - 1) / $q))]] AS quantiles, "
    "size(scores) AS scored"
)
# The nuclei of a viewport (bounds inclusive, pixels) from the point index, as [nid, x, y, area, score]
# lists, at most $limit of them (the caller asks for one more than it draws, to know it was cut).
VIEWPORT_NUCLEI = (
    "MATCH (:Cohort {name: $cohort})<-[m:IN_COHORT]-(:Image {id: $image_id}) "
    "CALL (m) { "
    "  MATCH (n:Nucleus) USING INDEX n:Nucleus(pos) "
    "  WHERE point.withinBBox(n.pos, point({x: $x0, y: $y0}), point({x: $x1, y: $y1})) "
    "  AND n.segmentation = m.segmentation "
    "  WITH n LIMIT $limit "
    "  RETURN collect([n.nid, n.centroid_x, n.centroid_y, n.area, "
    "                  CASE WHEN $property IS NULL THEN null ELSE n[$property] END]) AS nuclei "
    "} "
    "RETURN nuclei"
)

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
    "MATCH (c:Cohort {name: $cohort})<-[m:IN_COHORT]-(i:Image) "
    "OPTIONAL MATCH (s:Segmentation {key: m.segmentation}) "
    "RETURN i.id AS id, m.path AS path, m.label AS label, m.patient AS patient, i.width AS width, "
    "i.height AS height, s.detector AS detector, s.n_nuclei AS n_nuclei, s.n_edges AS n_edges, "
    "toString(s.ingested_at) AS ingested_at, m.segmentation AS segmentation ORDER BY label, id"
)

# --- one image --------------------------------------------------------------------------------------
# One query, lists not rows: the nuclei as [nid, x, y, area, score] (ordered by nid; a list per nucleus
# because collect() drops nulls and a missing score must stay a hole) and the NEAR edges as nid pairs.
DASH_IMAGE_GRAPH = (
    "MATCH (:Cohort {name: $cohort})<-[m:IN_COHORT]-(i:Image {id: $image_id}) "
    "MATCH (s:Segmentation {key: m.segmentation}) "
    "CALL (s) { "
    "  MATCH (s)-[:HAS_NUCLEUS]->(n:Nucleus) "
    "  WITH n ORDER BY n.nid "
    "  RETURN collect([n.nid, n.centroid_x, n.centroid_y, n.area, "
    "                  CASE WHEN $property IS NULL THEN null ELSE n[$property] END]) AS nuclei "
    "} "
    "CALL (s) { "
    "  MATCH (s)-[:HAS_NUCLEUS]->(a:Nucleus)-[:NEAR]->(b:Nucleus) "
    "  RETURN collect(a.nid) AS src, collect(b.nid) AS dst "
    "} "
    "RETURN i.id AS id, m.path AS path, m.label AS label, m.patient AS patient, i.width AS width, "
    "i.height AS height, s.detector AS detector, s.n_nuclei AS n_nuclei, s.n_edges AS n_edges, "
    "s.key AS segmentation, nuclei, src, dst"
)
DASH_NUCLEUS = (
    "MATCH (n:Nucleus {uid: $uid}) "
    "RETURN n {.*, features: null, pos: null} AS props, "
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
    "RETURN e.key AS key, e.run_id AS run_id, r.model AS model, r.ensemble AS ensemble, e.method AS method, "
    "e.hops AS hops, " + EXPLANATION_OUTPUT + ", e.property AS property, COUNT { (e)-[:EXPLAINS]->() } AS images, "
    "coalesce(e.stale_images, []) AS stale_images, toString(e.updated_at) AS updated_at, e.evaluation AS evaluation "
    "ORDER BY r.created_at DESC, e.method, e.hops, output"
)
DASH_RUN_PREDICTIONS = (
    "MATCH (r:ModelRun {id: $run_id})-[p:PREDICTED]->(i:Image) "
    "OPTIONAL MATCH (i)-[m:IN_COHORT]->(:Cohort {name: r.cohort}) "
    "RETURN i.id AS image_id, m.label AS label, p.pred AS pred, p.prob AS prob, p.split AS split, "
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
    "MATCH (c:Cohort {name: $cohort})<-[m:IN_COHORT]-(i:Image) "
    "MATCH (e)-[:EXPLAINS]->(s:Segmentation {key: m.segmentation}) "
    "WITH e.property AS prop, i, m, s "
    "CALL (i, s, prop) { "
    "  MATCH (s)-[:HAS_NUCLEUS]->(n:Nucleus) WHERE n[prop] IS NOT NULL "
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
    "RETURN i.id AS image_id, m.label AS label, total, nuclei ORDER BY image_id"
)

# --- console library --------------------------------------------------------------------------------
# Named, parameterised neighbourhood queries for the Cypher page. Queries that return nucleus
# positions (image_id, x, y) are drawn over the image. Variable-length bounds cannot be parameters,
# so the one- and two-hop versions are separate queries.
CONSOLE_LIBRARY: dict[str, dict] = {
    "Neighbours of a nucleus (1 hop)": {
        "query": (
            "MATCH (:Cohort {name: $cohort})<-[m:IN_COHORT]-(:Image {id: $image_id}) "
            "MATCH (n:Nucleus {segmentation: m.segmentation, nid: $nid})-[r:NEAR]-(o:Nucleus) "
            "RETURN o.image_id AS image_id, o.nid AS nid, o.centroid_x AS x, o.centroid_y AS y, "
            "r.dist AS dist, r.weight AS weight, o.area AS area ORDER BY dist"
        ),
        "params": {"cohort": "", "image_id": "", "nid": 1},
        "help": "The nuclei linked to one nucleus, nearest first.",
    },
    "Two-hop neighbourhood of a nucleus": {
        "query": (
            "MATCH (:Cohort {name: $cohort})<-[m:IN_COHORT]-(:Image {id: $image_id}) "
            "MATCH (n:Nucleus {segmentation: m.segmentation, nid: $nid}) "
            "MATCH p = (n)-[:NEAR*1..2]-(o:Nucleus) WHERE o <> n "
            "WITH o, min(length(p)) AS hops "
            "RETURN o.image_id AS image_id, o.nid AS nid, o.centroid_x AS x, o.centroid_y AS y, hops, "
            "o.area AS area ORDER BY hops, nid"
        ),
        "params": {"cohort": "", "image_id": "", "nid": 1},
        "help": "Every nucleus within two NEAR hops, with its hop distance.",
    },
    "Most connected nuclei of an image": {
        "query": (
            "MATCH (:Cohort {name: $cohort})<-[m:IN_COHORT]-(:Image {id: $image_id}) "
            "MATCH (:Segmentation {key: m.segmentation})-[:HAS_NUCLEUS]->(n:Nucleus) "
            "WITH n, COUNT { (n)-[:NEAR]-() } AS degree ORDER BY degree DESC LIMIT $limit "
            "RETURN n.image_id AS image_id, n.nid AS nid, n.centroid_x AS x, n.centroid_y AS y, degree, "
            "n.area AS area"
        ),
        "params": {"cohort": "", "image_id": "", "limit": 25},
        "help": "Hubs of the cell graph: the nuclei with the most neighbours.",
    },
    "Isolated nuclei of an image": {
        "query": (
            "MATCH (:Cohort {name: $cohort})<-[m:IN_COHORT]-(:Image {id: $image_id}) "
            "MATCH (:Segmentation {key: m.segmentation})-[:HAS_NUCLEUS]->(n:Nucleus) "
            "WHERE COUNT { (n)-[:NEAR]-() } <= $max_degree "
            "RETURN n.image_id AS image_id, n.nid AS nid, n.centroid_x AS x, n.centroid_y AS y, "
            "COUNT { (n)-[:NEAR]-() } AS degree, n.area AS area ORDER BY degree, nid"
        ),
        "params": {"cohort": "", "image_id": "", "max_degree": 1},
        "help": "Nuclei with at most max_degree neighbours (sparse stroma, edges of tissue).",
    },
    "Large nuclei with crowded neighbourhoods": {
        "query": (
            "MATCH (:Cohort {name: $cohort})<-[m:IN_COHORT]-(:Image {id: $image_id}) "
            "MATCH (:Segmentation {key: m.segmentation})-[:HAS_NUCLEUS]->(n:Nucleus) WHERE n.area >= $min_area "
            "WITH n, COUNT { (n)-[:NEAR]-() } AS degree WHERE degree >= $min_degree "
            "RETURN n.image_id AS image_id, n.nid AS nid, n.centroid_x AS x, n.centroid_y AS y, n.area AS area, "
            "degree ORDER BY area DESC"
        ),
        "params": {"cohort": "", "image_id": "", "min_area": 200, "min_degree": 8},
        "help": "Big nuclei packed among many neighbours, as in crowded tumour nests.",
    },
    "Nuclei in a window": {
        "query": (
            "MATCH (:Cohort {name: $cohort})<-[m:IN_COHORT]-(:Image {id: $image_id}) "
            "MATCH (:Segmentation {key: m.segmentation})-[:HAS_NUCLEUS]->(n:Nucleus) "
            "WHERE $x0 <= n.centroid_x <= $x1 AND $y0 <= n.centroid_y <= $y1 "
            "RETURN n.image_id AS image_id, n.nid AS nid, n.centroid_x AS x, n.centroid_y AS y, n.area AS area, "
            "n.hematoxylin_od_mean AS hematoxylin ORDER BY nid"
        ),
        "params": {"cohort": "", "image_id": "", "x0": 0, "y0": 0, "x1": 400, "y1": 400},
        "help": "The nuclei whose centroids fall in a rectangle (pixels).",
    },
    "Triangles around a nucleus": {
        "query": (
            "MATCH (:Cohort {name: $cohort})<-[m:IN_COHORT]-(:Image {id: $image_id}) "
            "MATCH (a:Nucleus {segmentation: m.segmentation, nid: $nid})-[:NEAR]-(b:Nucleus)-[:NEAR]-(c:Nucleus)-[:NEAR]-(a) "
            "WHERE b.nid < c.nid "
            "RETURN b.image_id AS image_id, b.nid AS nid, b.centroid_x AS x, b.centroid_y AS y, c.nid AS closes_with "
            "ORDER BY nid"
        ),
        "params": {"cohort": "", "image_id": "", "nid": 1},
        "help": "Closed triangles through one nucleus: how clustered its neighbourhood is.",
    },
    "Top-scored nuclei of an image": {
        "query": (
            "MATCH (:Cohort {name: $cohort})<-[m:IN_COHORT]-(:Image {id: $image_id}) "
            "MATCH (:Segmentation {key: m.segmentation})-[:HAS_NUCLEUS]->(n:Nucleus) WHERE n[$property] IS NOT NULL "
            "RETURN n.image_id AS image_id, n.nid AS nid, n.centroid_x AS x, n.centroid_y AS y, "
            "n[$property] AS score, COUNT { (n)-[:NEAR]-() } AS degree ORDER BY score DESC LIMIT $limit"
        ),
        "params": {"cohort": "", "image_id": "", "property": "", "limit": 20},
        "help": "The most important nuclei under one explanation (property: an Explanation's property; "
                "occlusion ..._k1_logodds holds log-odds drops, ..._k1 probability drops).",
    },
    "Neighbourhood of the top-scored nucleus": {
        "query": (
            "MATCH (:Cohort {name: $cohort})<-[m:IN_COHORT]-(:Image {id: $image_id}) "
            "MATCH (:Segmentation {key: m.segmentation})-[:HAS_NUCLEUS]->(n:Nucleus) WHERE n[$property] IS NOT NULL "
            "WITH n ORDER BY n[$property] DESC LIMIT 1 "
            "MATCH (n)-[r:NEAR]-(o:Nucleus) "
            "RETURN o.image_id AS image_id, o.nid AS nid, o.centroid_x AS x, o.centroid_y AS y, "
            "o[$property] AS score, r.dist AS dist ORDER BY score DESC"
        ),
        "params": {"cohort": "", "image_id": "", "property": ""},
        "help": "Are the neighbours of the most important nucleus important too?",
    },
    "Images of a cohort by nucleus count": {
        "query": (
            "MATCH (:Cohort {name: $cohort})<-[m:IN_COHORT]-(i:Image) "
            "MATCH (s:Segmentation {key: m.segmentation}) "
            "RETURN i.id AS id, m.label AS label, s.n_nuclei AS nuclei, s.n_edges AS edges, "
            "round(toFloat(s.n_edges) / s.n_nuclei, 2) AS edges_per_nucleus ORDER BY nuclei DESC"
        ),
        "params": {"cohort": ""},
        "help": "Which images are dense or sparse.",
    },
}
