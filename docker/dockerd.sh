#!/usr/bin/env bash
# A private Docker engine for `make image` and `make test-container`, where no system daemon runs.
#
#   docker/dockerd.sh start    install Debian's docker.io (and debootstrap) if missing, start dockerd,
#                              wait until it answers, print `export DOCKER_HOST=...`
#   docker/dockerd.sh stop     stop the dockerd this script started (by its PID)
#   docker/dockerd.sh status   exit 0 when it answers, 1 otherwise
#   docker/dockerd.sh env      print `export DOCKER_HOST=...` (use: eval "$(docker/dockerd.sh env)")
#
# The daemon keeps its own data root, exec root and socket under FTPIPE_DOCKER_HOME (default
# ~/.ftpipe/docker), so it never touches a system daemon's state, and images survive a stop (the next
# `make test-container` reuses an image built for the same version). No bridge and no iptables: this
# machine has no firewall to program, and builds and test containers use `--network host`.
# Where a Docker daemon already answers on DOCKER_HOST, `start` uses it and `stop` leaves it alone.
set -euo pipefail

HOME_DIR="${FTPIPE_DOCKER_HOME:-${HOME:-/root}/.ftpipe/docker}"
SOCKET="$HOME_DIR/docker.sock"
PIDFILE="$HOME_DIR/dockerd.pid"
LOG="$HOME_DIR/dockerd.log"
HOST="unix://$SOCKET"
START_TIMEOUT_S="${FTPIPE_DOCKERD_TIMEOUT_S:-60}"

die() { echo "dockerd.sh: $*" >&2; exit 1; }

# The docker CLI Debian ships with its daemon, so client and daemon agree on the API version.
docker_cli() {
    if [[ -x /usr/bin/docker ]]; then echo /usr/bin/docker; else command -v docker || true; fi
}

answers() {  # answers HOST -> 0 when a daemon answers there
    local cli
    cli="$(docker_cli)"
    [[ -n "$cli" ]] && DOCKER_HOST="$1" timeout 10 "$cli" version >/dev/null 2>&1
}

install_if_missing() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    [[ ${#missing[@]} -eq 0 ]] && return 0
    [[ "$(id -u)" -eq 0 ]] || die "missing ${missing[*]}; install with: sudo apt-get install -y ${missing[*]}"
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
    echo "dockerd.sh: installing ${missing[*]} with apt-get" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null || die "apt-get update failed"
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
}

our_pid() {  # the PID of the dockerd we started, if it still runs
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start() {
    if [[ -n "${DOCKER_HOST:-}" && "${DOCKER_HOST}" != "$HOST" ]] && answers "$DOCKER_HOST"; then
        echo "dockerd.sh: using the daemon already answering on $DOCKER_HOST" >&2
        echo "export DOCKER_HOST=$DOCKER_HOST"
        return 0
    fi
    if our_pid >/dev/null && answers "$HOST"; then
        echo "export DOCKER_HOST=$HOST"
        return 0
    fi
    install_if_missing
    [[ "$(id -u)" -eq 0 ]] || die "dockerd needs root (or run a rootless daemon and set DOCKER_HOST)"
    mkdir -p "$HOME_DIR/data" "$HOME_DIR/exec"
    chmod 0700 "$HOME_DIR"
    rm -f "$SOCKET"
    # setsid: the daemon outlives this shell and a Ctrl-C in the terminal that started it.
    setsid dockerd \
        --data-root "$HOME_DIR/data" \
        --exec-root "$HOME_DIR/exec" \
        --pidfile "$PIDFILE" \
        -H "$HOST" \
        --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
        >>"$LOG" 2>&1 </dev/null &
    local launcher=$!
    local deadline=$((SECONDS + START_TIMEOUT_S))
    until answers "$HOST"; do
        if ! kill -0 "$launcher" 2>/dev/null; then
            tail -n 20 "$LOG" >&2 || true
            die "dockerd exited while starting (log: $LOG)"
        fi
        ((SECONDS < deadline)) || { tail -n 20 "$LOG" >&2 || true; die "dockerd did not answer within ${START_TIMEOUT_S}s (log: $LOG)"; }
        sleep 0.3
    done
    echo "dockerd.sh: dockerd $(cat "$PIDFILE") answers on $HOST" >&2
    echo "export DOCKER_HOST=$HOST"
}

stop() {
    local pid
    if ! pid="$(our_pid)"; then
        echo "dockerd.sh: no dockerd of ours is running" >&2
        rm -f "$PIDFILE"
        return 0
    fi
    kill -TERM "$pid"
    local stopped=0
    for _ in $(seq 1 150); do
        kill -0 "$pid" 2>/dev/null || { stopped=1; break; }
        sleep 0.2
    done
    if [[ "$stopped" == 0 ]]; then
        echo "dockerd.sh: dockerd $pid did not stop in 30 s; sending SIGKILL" >&2
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
    # dockerd leaves its network namespace mounted under the exec root: unmount it, so the folder can go.
    local mounted
    for mounted in "$HOME_DIR"/exec/netns/*; do
        if mountpoint -q "$mounted" 2>/dev/null; then umount "$mounted" 2>/dev/null || true; fi
    done
    echo "dockerd.sh: dockerd $pid stopped" >&2
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) answers "$HOST" ;;
    env) echo "export DOCKER_HOST=$HOST" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
