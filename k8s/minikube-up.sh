#!/usr/bin/env bash
# ftpipe end to end on a local minikube cluster (make minikube-up):
#   1. start the minikube profile (MINIKUBE_PROFILE, default ftpipe; 4 CPUs, 12 GB) unless it runs;
#   2. install KFP standalone $PIPELINE_VERSION (default 2.14.3) from its documented kustomize manifests;
#   3. build the component image and load it into the cluster (`minikube image load`);
#   4. deploy k8s/overlays/minikube (ServiceAccount, RBAC, S3 Secret with generated keys, SeaweedFS, bucket);
#   5. upload the demo data and models through a port-forward, compile the demo pipeline for this cluster
#      (CPU only) and submit a run with `ftpipe submit`; print where to watch it.
# Needs docker, minikube and kubectl, `make install`, and internet access (KFP manifests, images).
set -euo pipefail

ROOT="$(cd "${BASH_SOURCE[0]%/*}/.." && pwd)"
OVERLAY=k8s/overlays/minikube
# shellcheck source=k8s/lib.sh
source "$ROOT/k8s/lib.sh"
PROFILE="${MINIKUBE_PROFILE:-ftpipe}"

require minikube "install minikube (https://minikube.sigs.k8s.io/docs/start/)"
require_common
docker info >/dev/null 2>&1 || die "docker does not answer: start the Docker engine first"

if minikube status -p "$PROFILE" >/dev/null 2>&1; then
    step "minikube profile $PROFILE is running"
else
    step "starting minikube profile $PROFILE"
    minikube start -p "$PROFILE" --driver=docker --cpus="${MINIKUBE_CPUS:-4}" --memory="${MINIKUBE_MEMORY:-12g}"
fi
kubectl config use-context "$PROFILE" >/dev/null

install_kfp
build_image
image="$(param IMAGE)"
step "loading $image into minikube"
minikube image load "$image" -p "$PROFILE"
ensure_credentials
deploy_overlay
upload_demo_data
compile_and_submit "$(cluster_config minikube)" minikube
