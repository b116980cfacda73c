# One image for every role of the ledger: api, relay, projection workers, migrations.
FROM python:3.11-slim
WORKDIR /app
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir -r requirements.lock
COPY ledger ledger
COPY commands commands
COPY projections projections
COPY api api
COPY migrations_sql migrations_sql
RUN pip install --no-cache-dir --no-deps --no-build-isolation . \
 && useradd --system --no-create-home ledger
USER ledger
ENTRYPOINT ["ledger"]
CMD ["serve"]
