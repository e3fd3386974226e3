#!/usr/bin/env bash
# THE benchmark command: bash bench/run.sh [--quick] [--only taskmill,huey] [--reps N]
# Creates bench/.venv when missing, installs the pinned peers and taskmill from this checkout
# (again only when bench/requirements.txt or pyproject.toml changed), then runs every system.
# Needs Redis on 127.0.0.1:6379 (db 14 only), RabbitMQ on 127.0.0.1:5672 with rabbitmqctl (vhost
# "bench", created by run.py when missing) and PostgreSQL on 127.0.0.1:5432 (database test, schema
# taskmill_bench); the systems of a server that is not reachable are skipped, and the report says so.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=bench/.venv
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
stamp="$venv/.installed"
want="$(cat bench/requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -r bench/requirements.txt -e ".[redis,postgres,amqp,fast]"
    echo "$want" > "$stamp"
fi
exec "$venv/bin/python" bench/run.py "$@"
