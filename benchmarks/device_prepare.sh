#!/usr/bin/env bash
# Here, before a session that has a GPU machine (the `device` tool): the wheels that machine's image
# lacks and the preprocessed CFP set, in git-ignored folders the `run` call carries. Then, there:
#   bash benchmarks/device_check.sh bench   carry .whl/bench, .gpudata   (benchmarks/device.py, one CFP cell)
#   bash benchmarks/device_check.sh tests   carry .whl/all               (CUDA tests, a `veil benchmark` cell)
# Two calls on one warm machine: the set (36 MB) and every wheel (22 MB) together pass the 64 MiB a
# call carries. Versions are this checkout's venv's; mlflow-skinny is the MLflow client (the full
# `mlflow` wheel adds the UI's JavaScript only).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
for d in /.whl/ /.gpudata/; do grep -qxF "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
bench="gymnasium farama-notifications facenet-pytorch"
all="$bench alembic annotated-types blinker cachetools databricks-sdk docker fastapi flask flask-cors gitdb gitpython
     google-auth graphene graphql-core graphql-relay gunicorn huey importlib-metadata itsdangerous jsonschema
     jsonschema-specifications lazy-importer mako mlflow-skinny mlflow-tracing opacus opentelemetry-api
     opentelemetry-proto opentelemetry-sdk opentelemetry-semantic-conventions prettytable pyasn1 pyasn1-modules
     pydantic pydantic-core python-dotenv python-multipart referencing rpds-py smmap sqlalchemy sqlparse
     stable-baselines3 starlette typing-inspection uvicorn wcwidth"
pins() {  # "name==version" of each name as this venv has it
    "$PY" - "$@" <<'PYEOF'
import sys
from importlib.metadata import version
print("\n".join(f"{n}=={version(n)}" for n in sys.argv[1:]))
PYEOF
}
fetch() {  # fetch DIR NAME...: x86-64 CPython 3.12 wheels, no dependencies (each is named)
    local dir=$1; shift
    rm -rf "$dir" && mkdir -p "$dir"
    pins "$@" > "$dir/requirements.txt"
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dir" -r "$dir/requirements.txt"
}
fetch .whl/bench $bench
fetch .whl/all $all
mkdir -p .gpudata && rm -f .gpudata/faces-*
entry=$(VEIL_DATA_ROOT=${VEIL_DATA_ROOT:-../shared/datasets} "$PY" -c "
from veil.recognition.data import DataConfig, cache_entry, load_faces
c = DataConfig(source='cfp', align=True)
load_faces(c)  # builds the cache entry if this machine has none yet
print(cache_entry(c))")
cp "$entry" "${entry%.npy}.json" .gpudata/
du -sh .whl/bench .whl/all .gpudata
