# The nucleograph application image (dashboard and scheduler services of docker-compose.yml).
# Neo4j runs in its own official container; NEO4J_URI points there, so no Java is needed here.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY nucleograph ./nucleograph
COPY ingest ./ingest
COPY gnn ./gnn
COPY dashboard ./dashboard
COPY db ./db
COPY jobs ./jobs
RUN pip install --no-cache-dir "psycopg2-binary" -e . 
ENV NUCLEOGRAPH_HOME=/var/lib/nucleograph
EXPOSE 8501
CMD ["nucleograph", "dashboard", "--host", "0.0.0.0"]
