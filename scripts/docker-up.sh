#!/usr/bin/env bash
# Makes sure a Docker Engine answers on this machine: does nothing when `docker version` already
# works; otherwise installs Debian's docker.io if missing, starts dockerd in the background
# (systemd when it runs, else a detached process logging to a file) and waits for it.
#
# Usage: scripts/docker-up.sh
# Env:   STACYVM_DOCKERD_LOG      dockerd log file (default /var/log/stacyvm-dockerd.log as root,
#                                 else $TMPDIR/stacyvm-dockerd.log)
#        STACYVM_DOCKER_WAIT_S    seconds to wait for the daemon (default 60)
# Prints one line on success; on failure, the reason and the tail of the relevant log.
set -euo pipefail

if [ "$(id -u)" -eq 0 ]; then
  log_file="${STACYVM_DOCKERD_LOG:-/var/log/stacyvm-dockerd.log}"
else
  log_file="${STACYVM_DOCKERD_LOG:-${TMPDIR:-/tmp}/stacyvm-dockerd.log}"
fi
wait_s="${STACYVM_DOCKER_WAIT_S:-60}"
apt_log="${TMPDIR:-/tmp}/stacyvm-docker-up-apt.log"

say() { printf 'docker-up: %s\n' "$*"; }
die() {
  printf 'docker-up: error: %s\n' "$*" >&2
  exit 1
}

# Root runs commands directly; anyone else needs password-less sudo.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo -n "$@"
  else
    die "need root (or password-less sudo) to run: $*"
  fi
}

server_version() {
  docker version --format '{{.Server.Version}}' 2>/dev/null
}

answers() {
  command -v docker >/dev/null 2>&1 && server_version >/dev/null
}

# A dockerd that is alive but not answering yet (still starting, or ours from a previous run)
# must be waited for, never doubled: two daemons would fight over docker0 and iptables.
running_dockerd_pid() {
  local pidfile=/var/run/docker.pid pid
  if [ -r "$pidfile" ]; then
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    if [ -n "$pid" ] && [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
      printf '%s\n' "$pid"
      return 0
    fi
  fi
  return 1
}

# $1: pid of the process we started, if any; its early death ends the wait at once.
wait_for_daemon() {
  local started_pid="${1:-}" deadline=$((SECONDS + wait_s))
  while [ "$SECONDS" -lt "$deadline" ]; do
    if answers; then return 0; fi
    if [ -n "$started_pid" ] && ! kill -0 "$started_pid" 2>/dev/null; then
      fail_with_log "dockerd exited during startup"
    fi
    sleep 1
  done
  return 1
}

fail_with_log() {
  printf 'docker-up: error: %s\n' "$1" >&2
  if [ -s "$log_file" ]; then
    printf -- '--- last lines of %s ---\n' "$log_file" >&2
    tail -n 30 "$log_file" >&2
  fi
  exit 1
}

if answers; then
  say "Docker Engine $(server_version) answers; nothing to do"
  exit 0
fi

# A remote or custom daemon is someone else's to start: starting a local one would not help.
if [ -n "${DOCKER_HOST:-}" ] && [ "${DOCKER_HOST}" != "unix:///var/run/docker.sock" ] &&
  [ "${DOCKER_HOST}" != "unix:///run/docker.sock" ]; then
  die "DOCKER_HOST=${DOCKER_HOST} does not answer; start that daemon yourself (this script only starts the local one)"
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
  : >"$apt_log"
  if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >>"$apt_log" 2>&1 ||
    ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io >>"$apt_log" 2>&1; then
    printf 'docker-up: error: installing docker.io failed; last lines of %s:\n' "$apt_log" >&2
    tail -n 20 "$apt_log" >&2
    exit 1
  fi
  # The package may have started the service (systemd), or the socket belongs to a daemon
  # outside this machine's view (a mounted socket): either way there is nothing to start.
  if answers; then
    say "installed docker.io; Docker Engine $(server_version) answers"
    exit 0
  fi
fi

started_pid=
if pid="$(running_dockerd_pid)"; then
  how="waited for the running dockerd (pid $pid)"
elif [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
  as_root systemctl start docker.service ||
    die "systemctl start docker failed; see: journalctl -u docker.service"
  how="started docker.service"
else
  as_root mkdir -p "$(dirname "$log_file")"
  # setsid + nohup: the daemon outlives this script and the terminal or CI step that ran it.
  as_root setsid nohup dockerd >>"$log_file" 2>&1 </dev/null &
  started_pid=$!
  how="started dockerd (log: $log_file)"
fi

if ! wait_for_daemon "$started_pid"; then
  fail_with_log "the Docker daemon did not answer within ${wait_s}s ($how)"
fi
say "Docker Engine $(server_version) answers; $how"
