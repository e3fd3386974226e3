#!/usr/bin/env bash
# THE benchmark command: bash bench/run.sh [--quick] [--only taskmill,huey] [--reps N]
# Creates bench/.venv when missing, installs the pinned peers and taskmill from this checkout
# (again only when bench/requirements.txt or pyproject.toml changed), then runs every system.
# Needs Redis on 127.0.0.1:6379; uses db 14 only.
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
    "$venv/bin/python" -m pip install --quiet -r bench/requirements.txt -e ".[redis,fast]"
    echo "$want" > "$stamp"
fi
exec "$venv/bin/python" bench/run.py "$@"
