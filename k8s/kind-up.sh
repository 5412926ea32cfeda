#!/usr/bin/env bash
# ftpipe end to end on a local kind cluster (make kind-up):
#   1. create the kind cluster (KIND_CLUSTER_NAME, default ftpipe) unless it exists;
#   2. install KFP standalone $PIPELINE_VERSION (default 2.14.3) from its documented kustomize manifests;
#   3. build the component image and load it into the cluster's nodes (`kind load docker-image`);
#   4. deploy k8s/overlays/kind (ServiceAccount, RBAC, S3 Secret with generated keys, SeaweedFS, bucket);
#   5. upload the demo data and models through a port-forward, compile the demo pipeline for this cluster
#      (CPU only) and submit a run with `ftpipe submit`; print where to watch it.
# Needs docker, kind and kubectl, `make install`, and internet access (KFP manifests, images).
set -euo pipefail

ROOT="$(cd "${BASH_SOURCE[0]%/*}/.." && pwd)"
OVERLAY=k8s/overlays/kind
# shellcheck source=k8s/lib.sh
source "$ROOT/k8s/lib.sh"
CLUSTER="${KIND_CLUSTER_NAME:-ftpipe}"

require kind "install kind (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
require_common
docker info >/dev/null 2>&1 || die "docker does not answer: start the Docker engine first"

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    step "kind cluster $CLUSTER exists"
else
    step "creating kind cluster $CLUSTER"
    kind create cluster --name "$CLUSTER" --wait 180s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

install_kfp
build_image
image="$(param IMAGE)"
step "loading $image into the kind nodes"
kind load docker-image "$image" --name "$CLUSTER"
ensure_credentials
deploy_overlay
upload_demo_data
compile_and_submit "$(cluster_config kind)" kind
