#!/usr/bin/env bash
# CI container stage: build the three server images from deploy/Dockerfile and the PostgreSQL image from
# deploy/postgres.Dockerfile, then, with deploy/compose.yaml, in two rounds:
#  1. the three servers and a second vision server: wait until healthy, ask them over the compose network
#     (`nnprobe health` in a container), run deploy/smoke.py through the SDK from the host, read /metrics,
#     stop them (SIGTERM must give exit code 0);
#  2. profile `replicas`: PostgreSQL and two sequence replicas (the same sequence image) sharing its job
#     queue and a data volume: wait until healthy, run deploy/smoke.py against one comma-separated address
#     list of both (a tiny training job must complete, and each replica must see its job and checkpoint),
#     stop them (SIGTERM, SIGINT for PostgreSQL: exit code 0).
# Then tear down. One round after the other: the transfer check is CPU-heavy and the machine may be small.
#
# Runs as root on a machine without a Docker engine or registry: ../shared/tools/local-docker.sh starts a
# private dockerd with a stand-in python:3.11-slim and a local wheel index, and is stopped on exit.
#
#   deploy/ci-containers.sh                                  # cold: fresh Docker data dir, removed after
#   NNPROBE_CI_DOCKER_DIR=/var/tmp/nnprobe-docker deploy/ci-containers.sh   # kept: warm layer cache
set -euo pipefail
cd "$(dirname "$0")/.."

LOCAL_DOCKER=${LOCAL_DOCKER:-../shared/tools/local-docker.sh}
# Without the local-docker tool, use a Docker engine that is already running (a developer's machine with
# a registry); with neither, there is nothing to run containers on: say so loudly and stop.
USE_LOCAL_DOCKER=1
if [ ! -x "$LOCAL_DOCKER" ]; then
  USE_LOCAL_DOCKER=0
  if ! docker info >/dev/null 2>&1; then
    echo "[ci-containers] SKIPPED: no Docker engine is running and $LOCAL_DOCKER is not there to start one" >&2
    exit 0
  fi
fi
PROJECT=${NNPROBE_CI_PROJECT:-nnprobe-ci}
HEALTHY_TIMEOUT=${NNPROBE_CI_HEALTHY_TIMEOUT:-240}
# Deadline of each smoke-test call: generous, since the transfer check (a PGD attack, then the peer's first
# classification, which exports its model to ONNX) takes 20 to 60 s on a busy 2-core machine.
SMOKE_TIMEOUT=${NNPROBE_CI_SMOKE_TIMEOUT:-180}
SERVICES=(vision sequence attention vision-peer)
REPLICAS=(postgres sequence-1 sequence-2)
COMPOSE=(docker-compose --project-name "$PROJECT" --file deploy/compose.yaml --profile transfer
  --profile replicas)

if [ -n "${NNPROBE_CI_DOCKER_DIR:-}" ]; then
  DOCKER_DIR=$NNPROBE_CI_DOCKER_DIR KEEP_DOCKER_DIR=1
else
  DOCKER_DIR=$(mktemp -d /tmp/nnprobe-ci.XXXXXX) KEEP_DOCKER_DIR=0
fi

declare -A TIMES=()
STARTED=$SECONDS PHASE_START=$SECONDS
log() { printf '[ci-containers %4ss] %s\n' "$((SECONDS - STARTED))" "$*" >&2; }
phase() { PHASE_START=$SECONDS; log "$*"; }
took() { TIMES[$1]=$((SECONDS - PHASE_START)); log "$1: ${TIMES[$1]} s"; }

cleanup() {
  local rc=$?
  trap - EXIT
  set +e
  if docker info >/dev/null 2>&1; then
    if [ "$rc" -ne 0 ]; then
      log "FAILED (rc=$rc): container states and logs follow"
      "${COMPOSE[@]}" ps
      "${COMPOSE[@]}" logs --no-color --tail 60
    fi
    phase "compose down -v"
    "${COMPOSE[@]}" down --volumes --remove-orphans --timeout 20
    took down
  fi
  if [ "$USE_LOCAL_DOCKER" = 1 ]; then
    "$LOCAL_DOCKER" down "$DOCKER_DIR"
  fi
  [ "$KEEP_DOCKER_DIR" = 1 ] || rm -rf "$DOCKER_DIR"
  log "timings (s): $(for k in up build start healthy health smoke stop \
    replicas_start replicas_healthy replicas_smoke replicas_stop down; do
    [ -n "${TIMES[$k]:-}" ] && printf '%s=%s ' "$k" "${TIMES[$k]}"; done)total=$((SECONDS - STARTED))"
  exit "$rc"
}
trap cleanup EXIT

[ -x .venv/bin/python ] || make install

if [ "$USE_LOCAL_DOCKER" = 1 ]; then
  phase "local-docker up ($DOCKER_DIR)"
  eval "$("$LOCAL_DOCKER" up "$DOCKER_DIR")"
else
  phase "using the running Docker engine (no $LOCAL_DOCKER)"
fi
took up

# Host ports: free ones, so the stage runs next to anything else on the machine (`make up` included).
read -r -a PORTS <<<"$(.venv/bin/python -c '
import socket
socks = [socket.socket() for _ in range(8)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')"
export NNPROBE_VISION_HOST_PORT=${PORTS[0]} NNPROBE_SEQUENCE_HOST_PORT=${PORTS[1]}
export NNPROBE_ATTENTION_HOST_PORT=${PORTS[2]} NNPROBE_VISION_METRICS_HOST_PORT=${PORTS[3]}
export NNPROBE_SEQUENCE_METRICS_HOST_PORT=${PORTS[4]} NNPROBE_ATTENTION_METRICS_HOST_PORT=${PORTS[5]}
export NNPROBE_SEQUENCE_1_HOST_PORT=${PORTS[6]} NNPROBE_SEQUENCE_2_HOST_PORT=${PORTS[7]}

phase "building the images (docker-compose build; the replicas reuse the sequence image)"
"${COMPOSE[@]}" build
took build
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep '^nnprobe/' >&2

wait_healthy() { # wait_healthy SERVICE...: until every one is running and healthy
  local deadline=$((SECONDS + HEALTHY_TIMEOUT)) states service id
  while :; do
    states=()
    for service in "$@"; do
      id=$("${COMPOSE[@]}" ps -q "$service")
      states+=("$service=$(docker inspect -f '{{.State.Status}}/{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")")
    done
    case " ${states[*]} " in
      *=exited/* | *=dead/* | */unhealthy\ *) log "a container failed: ${states[*]}"; exit 1 ;;
      *=running/starting\ * | *=created/* | *=restarting/*) ;;
      *) break ;;
    esac
    [ "$SECONDS" -lt "$deadline" ] || { log "not healthy in time: ${states[*]}"; exit 1; }
    sleep 1
  done
  log "healthy: ${states[*]}"
}

stop_cleanly() { # stop_cleanly SERVICE...: stop them; each must exit 0
  local service code
  "${COMPOSE[@]}" stop --timeout 20 "$@"
  for service in "$@"; do
    code=$(docker inspect -f '{{.State.ExitCode}}' "$("${COMPOSE[@]}" ps -q "$service")")
    [ "$code" = 0 ] || { log "$service exited with $code after its stop signal"; exit 1; }
  done
}

phase "starting ${SERVICES[*]}"
"${COMPOSE[@]}" up --detach "${SERVICES[@]}"
took start

phase "waiting for healthy (at most ${HEALTHY_TIMEOUT} s)"
wait_healthy "${SERVICES[@]}"
took healthy

phase "nnprobe health over the compose network (depends_on: service_healthy)"
"${COMPOSE[@]}" run --rm health
took health

phase "smoke test through the SDK"
.venv/bin/python deploy/smoke.py --timeout "$SMOKE_TIMEOUT" --vision "127.0.0.1:$NNPROBE_VISION_HOST_PORT" \
  --sequence "127.0.0.1:$NNPROBE_SEQUENCE_HOST_PORT" --attention "127.0.0.1:$NNPROBE_ATTENTION_HOST_PORT" \
  --transfer-peer vision-peer:50051
took smoke
for service in vision sequence attention; do
  var=NNPROBE_${service^^}_METRICS_HOST_PORT
  metrics=$(curl -fsS --max-time 5 "http://127.0.0.1:${!var}/metrics") || {
    log "metrics: $service does not serve /metrics"; exit 1; }
  grep -q '^nnprobe_requests_total{.*code="OK"' <<<"$metrics" || {
    log "metrics: $service counted no successful request"; exit 1; }
  log "metrics: $service serves /metrics and counted the smoke test's calls"
done

phase "stopping ${SERVICES[*]} (SIGTERM; each server must drain and exit 0)"
stop_cleanly "${SERVICES[@]}"
took stop

phase "starting ${REPLICAS[*]} (PostgreSQL first: the replicas wait for it to be healthy)"
"${COMPOSE[@]}" up --detach "${REPLICAS[@]}"
took replicas_start

phase "waiting for healthy (at most ${HEALTHY_TIMEOUT} s)"
wait_healthy "${REPLICAS[@]}"
took replicas_healthy

phase "smoke test through the SDK against both replicas (one address list)"
replicas="127.0.0.1:$NNPROBE_SEQUENCE_1_HOST_PORT,127.0.0.1:$NNPROBE_SEQUENCE_2_HOST_PORT"
.venv/bin/python deploy/smoke.py --timeout "$SMOKE_TIMEOUT" --only sequence --sequence "$replicas" \
  --sequence-replicas "$replicas"
took replicas_smoke

phase "stopping ${REPLICAS[*]} (SIGTERM, SIGINT for PostgreSQL; each must exit 0)"
stop_cleanly "${REPLICAS[@]}"
took replicas_stop
log "all containers stopped cleanly; container stage passed"
