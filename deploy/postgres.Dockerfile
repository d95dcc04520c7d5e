# PostgreSQL for the sequence replicas' shared job queue (compose profile `replicas`), built from the same
# base image as the nnprobe servers (deploy/Dockerfile), so it needs no image of its own from a registry and
# shares the base layers on disk. Debian's `postgresql` package: PostgreSQL 15 on bookworm.
#
#   docker build --network host -f deploy/postgres.Dockerfile -t nnprobe/postgres:15 .
#
# It reads the official `postgres` image's settings (POSTGRES_USER, POSTGRES_PASSWORD or
# POSTGRES_PASSWORD_FILE, POSTGRES_DB, PGDATA) and keeps its data in the same place
# (/var/lib/postgresql/data, a volume), so a deployment that can pull from a registry may use the
# official image instead (compose: NNPROBE_POSTGRES_IMAGE=postgres:15-bookworm).
# deploy/postgres-entrypoint.sh creates the cluster on the first start (initdb, as the unprivileged
# `postgres` user), then runs the server as PID 1.

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE}
# The `postgres` user and group first, with the official image's ids (999), which the package then uses.
# No `main` cluster from the package: the entrypoint creates one in $PGDATA on the first start. The
# PostgreSQL major version is the base's Debian release's (hence no version pin).
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 postgres \
 && useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql --shell /bin/sh postgres \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-common \
 && sed -ri 's/^#? *create_main_cluster *=.*/create_main_cluster = false/' \
      /etc/postgresql-common/createcluster.conf \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql \
 && rm -rf /var/lib/apt/lists/* \
 && ln -s "$(dirname /usr/lib/postgresql/*/bin/postgres)" /usr/lib/postgresql/bin \
 && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
 && chown postgres:postgres /var/lib/postgresql/data /var/run/postgresql \
 && chmod 0700 /var/lib/postgresql/data \
 && chmod 2775 /var/run/postgresql
COPY deploy/postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint
ENV PATH=/usr/lib/postgresql/bin:$PATH \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8
VOLUME ["/var/lib/postgresql/data"]
USER 999:999
EXPOSE 5432
HEALTHCHECK --interval=3s --timeout=5s --start-period=30s --retries=10 CMD ["pg_isready", "--quiet"]
# SIGINT is PostgreSQL's fast shutdown: sessions are ended, the server checkpoints and exits 0.
STOPSIGNAL SIGINT
ENTRYPOINT ["postgres-entrypoint"]
