# Throwaway services for tests/test_scale.py, on loopback, in one temporary folder:
# a PostgreSQL server (MLflow's backend store for `veil server`) and a Ray cluster of a head and one
# worker node (one CPU each). Source it, start, run the tests, stop:
#
#   source tests/scale_env.sh && scale_env_start
#   .venv/bin/python -m pytest tests/test_scale.py
#   scale_env_stop
#
# scale_env_start exports VEIL_TEST_PG_URI (postgresql://...) and VEIL_TEST_RAY_ADDRESS (HOST:PORT),
# which the tests read (they skip without them). Only the processes started here are stopped (by
# their process groups), never other Ray clusters or databases of this machine. As root, PostgreSQL
# runs as the `postgres` user (initdb refuses root). Needs PostgreSQL's binaries (Debian:
# apt-get install postgresql) and Ray in .venv (pip install -e '.[test]').

_scale_port() { "${SCALE_PYTHON:-.venv/bin/python}" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

_scale_pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin /usr/local/bin /usr/bin; do
    [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  echo "scale_env: no PostgreSQL binaries (initdb, pg_ctl); apt-get install postgresql" >&2
  return 1
}

_scale_as_pg() {  # run a PostgreSQL tool as the database's owner
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

_scale_wait() {  # until a `ray start` log says it started (2 minutes at most)
  local i
  for i in $(seq 240); do
    grep -q "Ray runtime started" "$1" 2>/dev/null && return 0
    grep -q "Error" "$1" 2>/dev/null && break
    sleep 0.5
  done
  echo "scale_env: Ray did not start; see $1" >&2
  tail -5 "$1" >&2
  return 1
}

scale_env_start() {
  local ray="${SCALE_RAY:-.venv/bin/ray}" pg pgport head rayport i
  SCALE_DIR="$(mktemp -d /tmp/veil-scale.XXXXXX)" || return 1
  export SCALE_DIR
  SCALE_PGIDS=""

  pg="$(_scale_pg_bin)" || return 1
  pgport="$(_scale_port)"
  mkdir -p "$SCALE_DIR/pg"
  [ "$(id -u)" = 0 ] && chown postgres "$SCALE_DIR" "$SCALE_DIR/pg"
  _scale_as_pg "$pg/initdb" -D "$SCALE_DIR/pg" -U veil --auth=trust -E UTF8 >"$SCALE_DIR/initdb.log" 2>&1 \
    || { cat "$SCALE_DIR/initdb.log" >&2; return 1; }
  _scale_as_pg "$pg/pg_ctl" -D "$SCALE_DIR/pg" -l "$SCALE_DIR/pg/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $pgport -k $SCALE_DIR/pg -c fsync=off" start >/dev/null \
    || { cat "$SCALE_DIR/pg/server.log" >&2; return 1; }
  SCALE_PG_BIN="$pg"
  export SCALE_PG_BIN
  _scale_as_pg "$pg/createdb" -h 127.0.0.1 -p "$pgport" -U veil mlflow || return 1
  export VEIL_TEST_PG_URI="postgresql://veil@127.0.0.1:$pgport/mlflow"

  # the cluster's own token (Ray's token authentication), in the folder, not in ~/.ray
  "${SCALE_PYTHON:-.venv/bin/python}" -c 'import secrets; print(secrets.token_hex(32))' >"$SCALE_DIR/ray_token"
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$SCALE_DIR/ray_token"
  rayport="$(_scale_port)"
  head=(--node-ip-address=127.0.0.1 --num-cpus=1 --num-gpus=0 --object-store-memory=150000000 --disable-usage-stats
        --block)
  setsid "$ray" start --head --port="$rayport" --include-dashboard=false --temp-dir="$SCALE_DIR/ray" \
    --min-worker-port=0 --max-worker-port=0 "${head[@]}" \
    >"$SCALE_DIR/ray-head.log" 2>&1 &
  SCALE_PGIDS="$!"
  export VEIL_TEST_RAY_ADDRESS="127.0.0.1:$rayport"
  _scale_wait "$SCALE_DIR/ray-head.log" || return 1
  setsid "$ray" start --address="$VEIL_TEST_RAY_ADDRESS" --min-worker-port=0 --max-worker-port=0 "${head[@]}" \
    >"$SCALE_DIR/ray-worker.log" 2>&1 &
  SCALE_PGIDS="$SCALE_PGIDS $!"
  export SCALE_PGIDS
  _scale_wait "$SCALE_DIR/ray-worker.log" || return 1
  for i in $(seq 30); do  # the worker node registered: the cluster has both CPUs
    "$ray" status --address="$VEIL_TEST_RAY_ADDRESS" 2>/dev/null | grep -q "/2.0 CPU" && break
    sleep 1
  done
  echo "scale_env: PostgreSQL $VEIL_TEST_PG_URI, Ray $VEIL_TEST_RAY_ADDRESS (head + 1 worker), in $SCALE_DIR"
}

scale_env_stop() {
  local g i
  for g in ${SCALE_PGIDS:-}; do kill -TERM -- "-$g" 2>/dev/null || true; done
  for i in $(seq 20); do
    local alive=""
    for g in ${SCALE_PGIDS:-}; do kill -0 -- "-$g" 2>/dev/null && alive=1; done
    [ -z "$alive" ] && break
    sleep 0.5
  done
  for g in ${SCALE_PGIDS:-}; do kill -KILL -- "-$g" 2>/dev/null || true; done
  if [ -n "${SCALE_DIR:-}" ] && [ -f "$SCALE_DIR/pg/postmaster.pid" ]; then
    _scale_as_pg "$SCALE_PG_BIN/pg_ctl" -D "$SCALE_DIR/pg" -m fast -w stop >/dev/null 2>&1 || true
  fi
  if [ -n "${SCALE_DIR:-}" ]; then rm -rf "$SCALE_DIR" 2>/dev/null || true; fi
  unset SCALE_PGIDS SCALE_DIR VEIL_TEST_PG_URI VEIL_TEST_RAY_ADDRESS RAY_AUTH_MODE RAY_AUTH_TOKEN_PATH
  return 0  # cleanup never decides a caller's exit status (.ci/run traps it on EXIT)
}
