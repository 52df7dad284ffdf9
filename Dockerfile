# Greenvisor: one node. Configure with env (DATABASE_URL, PROXY_PORT_TRANSACTION,
# PROXY_PORT_SESSION, PORT, CLIENT_AUTH); tenants via `manage.py applytenants` or the admin.
FROM python:3.11-slim-bookworm AS base

ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 GREENVISOR_DATA_DIR=/data
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-client \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt
COPY . .

# The relay's hot path compiled with mypyc (pooler/hotpath.py); gcc stays in this stage.
FROM base AS compile
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && python manage.py hotpath build

FROM base
COPY --from=compile /app/build/compiled /app/build/compiled
RUN useradd --system --home /app greenvisor && mkdir -p /data && chown greenvisor /data
USER greenvisor
VOLUME /data

EXPOSE 6543 5432 4000
CMD ["python", "manage.py", "runpooler"]
