#!/usr/bin/env bash
# Remote-worker smoke test: runs `stacyvm serve` (control plane) and `stacyvm worker` (worker-a) on
# loopback with SQLite (or PostgreSQL, see --help) and the mock provider, and drives a sandbox on
# the worker through the control plane's REST API: spawn, get, exec, streamed exec, file
# write/read, logs, destroy, then a drain that must make the worker process exit 0 on its own.
#
# Usage: scripts/smoke-remote-worker.sh [binary] [--mtls] [--auth shared|per-worker|signed|all]
#          [--ca-cert f --ca-key f --server-cert f --server-key f --client-cert f --client-key f]
#
# See scripts/README.md. Everything lives in a mktemp directory removed on exit; secrets are random
# per setup, written only to mode-600 files, and never printed.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$SCRIPT_DIR/.." && pwd)
DEFAULT_CLI="$REPO_ROOT/packages/server/dist/cli/main.js"
WORKER_ID=worker-a

usage() {
  cat <<EOF
Usage: $(basename "$0") [binary] [--mtls] [--auth shared|per-worker|signed|all]
       [--ca-cert f --ca-key f --server-cert f --server-key f --client-cert f --client-key f]

binary        stacyvm executable, or a .js/.mjs entry point run with node
              (default: $DEFAULT_CLI, built by \`npm run build\`)
--auth        worker credential setup(s): shared, per-worker, signed, all (default all;
              a comma-separated list also works). Each setup runs with fresh dirs, db and secrets.
--mtls        worker RPC over mutual TLS; without the certificate options an ephemeral CA,
              a worker server certificate (SAN IP:127.0.0.1) and a control-plane client
              certificate are generated with openssl.
--ca-cert/--ca-key          CA that signs the generated certificates (or only --ca-cert when
                            both certificate pairs below are given)
--server-cert/--server-key  worker RPC server certificate and key
--client-cert/--client-key  control-plane client certificate and key

Environment: STACYVM_REMOTE_SMOKE_CONTROL_PORT (17423, 17433 with --mtls),
STACYVM_REMOTE_SMOKE_WORKER_PORT (17430, 17440 with --mtls), STACYVM_REMOTE_SMOKE_WAIT_S (30),
STACYVM_REMOTE_SMOKE_DATABASE_DRIVER (sqlite; or postgres, with
STACYVM_REMOTE_SMOKE_DATABASE_DSN=postgres://user:pass@host:5432/db naming a database the
control plane may migrate; every setup uses it and leaves its rows there; the DSN is written
only to a mode-600 file and never printed).
EOF
}

usage_error() {
  echo "smoke-remote-worker: $*" >&2
  echo "run $(basename "$0") --help for usage" >&2
  exit 2
}

# --- arguments ------------------------------------------------------------------------------

BINARY=""
MTLS=0
AUTH_ARG=all
CA_CERT="" CA_KEY="" SERVER_CERT="" SERVER_KEY="" CLIENT_CERT="" CLIENT_KEY=""

need_value() {
  if [ "$2" -lt 2 ] || [ -z "$3" ]; then usage_error "$1 needs a value"; fi
}

while [ $# -gt 0 ]; do
  case "$1" in
  -h | --help)
    usage
    exit 0
    ;;
  --mtls) MTLS=1 ;;
  --auth=*) AUTH_ARG=${1#*=} ;;
  --auth)
    need_value "$1" $# "${2-}"
    AUTH_ARG=$2
    shift
    ;;
  --ca-cert | --ca-key | --server-cert | --server-key | --client-cert | --client-key)
    need_value "$1" $# "${2-}"
    case "$1" in
    --ca-cert) CA_CERT=$2 ;;
    --ca-key) CA_KEY=$2 ;;
    --server-cert) SERVER_CERT=$2 ;;
    --server-key) SERVER_KEY=$2 ;;
    --client-cert) CLIENT_CERT=$2 ;;
    --client-key) CLIENT_KEY=$2 ;;
    esac
    shift
    ;;
  -*) usage_error "unknown option $1" ;;
  *)
    [ -z "$BINARY" ] || usage_error "unexpected argument $1 (the binary is already $BINARY)"
    BINARY=$1
    ;;
  esac
  shift
done

SETUPS=()
IFS=',' read -r -a auth_items <<<"$AUTH_ARG"
for item in "${auth_items[@]}"; do
  case "$item" in
  all) SETUPS+=(shared per-worker signed) ;;
  shared | per-worker | signed) SETUPS+=("$item") ;;
  *) usage_error "--auth must be shared, per-worker, signed or all, got \"$item\"" ;;
  esac
done
[ ${#SETUPS[@]} -gt 0 ] || usage_error "--auth names no setup"

if [ "$MTLS" = 0 ] && [ -n "$CA_CERT$CA_KEY$SERVER_CERT$SERVER_KEY$CLIENT_CERT$CLIENT_KEY" ]; then
  usage_error "the certificate options need --mtls"
fi
if { [ -n "$SERVER_CERT" ] && [ -z "$SERVER_KEY" ]; } || { [ -z "$SERVER_CERT" ] && [ -n "$SERVER_KEY" ]; }; then
  usage_error "--server-cert and --server-key go together"
fi
if { [ -n "$CLIENT_CERT" ] && [ -z "$CLIENT_KEY" ]; } || { [ -z "$CLIENT_CERT" ] && [ -n "$CLIENT_KEY" ]; }; then
  usage_error "--client-cert and --client-key go together"
fi
if [ -n "$CA_KEY" ] && [ -z "$CA_CERT" ]; then usage_error "--ca-key needs --ca-cert"; fi
if [ "$MTLS" = 1 ] && [ -n "$CA_CERT" ] && [ -z "$CA_KEY" ] &&
  { [ -z "$SERVER_CERT" ] || [ -z "$CLIENT_CERT" ]; }; then
  usage_error "with --ca-cert, give --ca-key too (to sign the generated certificates) or both certificate pairs"
fi
if [ "$MTLS" = 1 ] && [ -z "$CA_CERT" ] && [ -n "$SERVER_CERT$CLIENT_CERT" ]; then
  usage_error "given certificates need --ca-cert (the CA that signed them)"
fi

abs_path() {
  case "$1" in
  /*) printf '%s' "$1" ;;
  *) printf '%s/%s' "$(pwd)" "$1" ;;
  esac
}

for f in "$CA_CERT" "$CA_KEY" "$SERVER_CERT" "$SERVER_KEY" "$CLIENT_CERT" "$CLIENT_KEY"; do
  if [ -n "$f" ] && [ ! -r "$f" ]; then usage_error "cannot read $f"; fi
done
[ -z "$CA_CERT" ] || CA_CERT=$(abs_path "$CA_CERT")
[ -z "$CA_KEY" ] || CA_KEY=$(abs_path "$CA_KEY")
[ -z "$SERVER_CERT" ] || SERVER_CERT=$(abs_path "$SERVER_CERT")
[ -z "$SERVER_KEY" ] || SERVER_KEY=$(abs_path "$SERVER_KEY")
[ -z "$CLIENT_CERT" ] || CLIENT_CERT=$(abs_path "$CLIENT_CERT")
[ -z "$CLIENT_KEY" ] || CLIENT_KEY=$(abs_path "$CLIENT_KEY")

# --- tools and binary -----------------------------------------------------------------------

if ! command -v curl >/dev/null 2>&1; then
  echo "smoke-remote-worker: curl is required (Debian/Ubuntu: apt-get install curl)" >&2
  exit 2
fi
NODE=$(command -v node 2>/dev/null || true)
OPENSSL=$(command -v openssl 2>/dev/null || true)
if [ "$MTLS" = 1 ] && [ -z "$OPENSSL" ] && { [ -z "$SERVER_CERT" ] || [ -z "$CLIENT_CERT" ]; }; then
  echo "smoke-remote-worker: --mtls needs openssl to generate certificates (apt-get install openssl), or pass them" >&2
  exit 2
fi

BIN=()
if [ -z "$BINARY" ]; then
  if [ ! -f "$DEFAULT_CLI" ]; then
    echo "smoke-remote-worker: $DEFAULT_CLI is missing; run \`npm run build\` at the repo root, or pass the binary" >&2
    exit 2
  fi
  [ -n "$NODE" ] || {
    echo "smoke-remote-worker: node is required to run $DEFAULT_CLI" >&2
    exit 2
  }
  BIN=("$NODE" "$DEFAULT_CLI")
else
  case "$BINARY" in
  *.js | *.mjs)
    [ -f "$BINARY" ] || usage_error "no such file: $BINARY"
    [ -n "$NODE" ] || usage_error "node is required to run $BINARY"
    BIN=("$NODE" "$(abs_path "$BINARY")")
    ;;
  */*)
    [ -x "$BINARY" ] || usage_error "not an executable file: $BINARY"
    BIN=("$(abs_path "$BINARY")")
    ;;
  *)
    resolved=$(command -v "$BINARY" 2>/dev/null || true)
    [ -n "$resolved" ] || usage_error "no such command: $BINARY"
    BIN=("$resolved")
    ;;
  esac
fi

DB_DRIVER=${STACYVM_REMOTE_SMOKE_DATABASE_DRIVER:-sqlite}
DB_DSN=${STACYVM_REMOTE_SMOKE_DATABASE_DSN-}
case "$DB_DRIVER" in
sqlite | sqlite3) DB_DRIVER=sqlite ;;
postgres | postgresql)
  DB_DRIVER=postgres
  [ -n "$DB_DSN" ] || usage_error "STACYVM_REMOTE_SMOKE_DATABASE_DRIVER=postgres needs STACYVM_REMOTE_SMOKE_DATABASE_DSN (postgres://user:pass@host:5432/db)"
  case "$DB_DSN" in
  postgres://* | postgresql://*) ;;
  *) usage_error "STACYVM_REMOTE_SMOKE_DATABASE_DSN must start with postgres:// or postgresql://" ;;
  esac
  ;;
*) usage_error "STACYVM_REMOTE_SMOKE_DATABASE_DRIVER must be sqlite or postgres, got \"$DB_DRIVER\"" ;;
esac

if [ "$MTLS" = 1 ]; then
  CONTROL_PORT=${STACYVM_REMOTE_SMOKE_CONTROL_PORT:-17433}
  WORKER_PORT=${STACYVM_REMOTE_SMOKE_WORKER_PORT:-17440}
  MODE=mTLS
  RPC_SCHEME=https
else
  CONTROL_PORT=${STACYVM_REMOTE_SMOKE_CONTROL_PORT:-17423}
  WORKER_PORT=${STACYVM_REMOTE_SMOKE_WORKER_PORT:-17430}
  MODE=plain-HTTP
  RPC_SCHEME=http
fi
WAIT_S=${STACYVM_REMOTE_SMOKE_WAIT_S:-30}
for v in "$CONTROL_PORT" "$WORKER_PORT" "$WAIT_S"; do
  case "$v" in
  '' | *[!0-9]*) usage_error "ports and STACYVM_REMOTE_SMOKE_WAIT_S must be positive integers, got \"$v\"" ;;
  esac
done
[ "$CONTROL_PORT" != "$WORKER_PORT" ] || usage_error "the control-plane and worker ports must differ"

CP_URL="http://127.0.0.1:$CONTROL_PORT"
API="$CP_URL/api/v1"

# The children see no STACYVM_* variable of ours or the caller's: only STACYVM_CONFIG.
UNSET_ENV=()
while IFS= read -r name; do
  UNSET_ENV+=(-u "$name")
done < <(compgen -e | grep '^STACYVM_' || true)

# --- workspace and cleanup ------------------------------------------------------------------

umask 077
WORK=$(mktemp -d "${TMPDIR:-/tmp}/stacyvm-remote-smoke.XXXXXX")
CP_PID=""
WORKER_PID=""
SETUP=""
SETUP_DIR=""
STEP="start"
HTTP_CODE=""
HTTP_CTYPE=""
BODY="$WORK/body"
CURL_ERR="$WORK/curl.err"

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# Sends SIGTERM, waits up to $2 seconds, then SIGKILL; prints nothing.
stop_pid() {
  local pid=$1 bound=$2 i=0
  alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  while alive "$pid" && [ $i -lt $((bound * 10)) ]; do
    sleep 0.1
    i=$((i + 1))
  done
  if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stop_pid "$WORKER_PID" 5
  stop_pid "$CP_PID" 5
  # A signal can land between starting a process and recording its pid: stop every child left.
  local pid
  for pid in $(jobs -p); do stop_pid "$pid" 5; done
  rm -rf "$WORK" 2>/dev/null || { sleep 0.5 && rm -rf "$WORK"; } || true
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers --------------------------------------------------------------------------------

step() {
  STEP=$1
  HTTP_CODE=""
}

ok() { echo "ok: [$SETUP] $*"; }

fail() {
  {
    echo
    echo "FAILED: [$SETUP] $STEP: $*"
    if [ -n "$HTTP_CODE" ]; then
      echo "--- HTTP $HTTP_CODE${HTTP_CTYPE:+ ($HTTP_CTYPE)}, body:"
      if [ -s "$BODY" ]; then head -c 4000 "$BODY"; else echo "(empty)"; fi
      echo
      [ ! -s "$CURL_ERR" ] || { echo "--- curl:" && cat "$CURL_ERR"; }
    fi
    if [ -n "$SETUP_DIR" ]; then
      for log in control-plane worker; do
        if [ -f "$SETUP_DIR/$log.log" ]; then
          echo "--- last 40 lines of the $log log:"
          tail -n 40 "$SETUP_DIR/$log.log"
        fi
      done
    fi
  } >&2
  exit 1
}

# A random hex secret (64 characters).
secret() {
  if [ -n "$OPENSSL" ]; then
    "$OPENSSL" rand -hex 32
  else
    od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
  fi
}

# A YAML double-quoted scalar.
yq() {
  local s=${1//\\/\\\\}
  s=${s//\"/\\\"}
  printf '"%s"' "$s"
}

# http METHOD URL [JSON-BODY [HEADER-FILE]]: response body in $BODY, status in $HTTP_CODE,
# content type in $HTTP_CTYPE. Keys travel in header files (never argv).
http() {
  local method=$1 url=$2 data=${3-} hdr=${4:-$API_HDR} out
  local args=(-sS -o "$BODY" -w '%{http_code} %{content_type}' -X "$method" -H "@$hdr" --max-time 30)
  if [ -n "$data" ]; then args+=(-H 'Content-Type: application/json' --data-binary "$data"); fi
  : >"$BODY"
  out=$(curl "${args[@]}" "$url" 2>"$CURL_ERR") || true
  HTTP_CODE=${out%% *}
  HTTP_CTYPE=${out#* }
  [ -n "$HTTP_CODE" ] || HTTP_CODE=000
}

expect_code() {
  local want
  for want in "$@"; do [ "$HTTP_CODE" = "$want" ] && return 0; done
  fail "expected HTTP $*, got $HTTP_CODE"
}

# json_get FILE PATH: the value at a dotted PATH (strings raw, others as JSON, "" when absent).
# With node it walks the document; without, it takes the first `"key":value` of the last segment.
json_get() {
  if [ -n "$NODE" ]; then
    "$NODE" -e '
      const fs = require("fs");
      let v;
      try { v = JSON.parse(fs.readFileSync(process.argv[1], "utf8")); } catch { process.exit(0); }
      for (const k of process.argv[2].split(".")) v = v === null || v === undefined ? undefined : v[k];
      if (v !== undefined && v !== null) process.stdout.write(typeof v === "string" ? v : JSON.stringify(v));
    ' "$1" "$2"
  else
    local key=${2##*.} raw
    raw=$(grep -o "\"$key\":\(\"\([^\"\\\\]\|\\\\.\)*\"\|[-0-9.a-z]*\)" "$1" | head -n 1 || true)
    raw=${raw#\""$key"\":}
    case "$raw" in
    \"*) printf '%b' "${raw:1:${#raw}-2}" ;;
    *) printf '%s' "$raw" ;;
    esac
  fi
}

# Checks the NDJSON body of the streamed exec: stdout "line 1\nline 2\n", then an exit line with
# exit_code 0 as the last line. Prints a reason and returns 1 otherwise.
check_stream() {
  if [ -n "$NODE" ]; then
    "$NODE" -e '
      const lines = require("fs").readFileSync(process.argv[1], "utf8").split("\n").filter((l) => l.trim() !== "");
      let out = "", exitLine = -1, exitCode;
      for (const [i, l] of lines.entries()) {
        let o;
        try { o = JSON.parse(l); } catch { console.log("line " + (i + 1) + " is not JSON"); process.exit(1); }
        if (o.stream === "stdout") out += o.data;
        else if (o.stream === "exit") { exitLine = i; exitCode = o.exit_code; }
      }
      if (out !== "line 1\nline 2\n") { console.log("stdout was " + JSON.stringify(out)); process.exit(1); }
      if (exitLine !== lines.length - 1) { console.log("no exit line at the end"); process.exit(1); }
      if (exitCode !== 0) { console.log("exit_code was " + JSON.stringify(exitCode)); process.exit(1); }
    ' "$BODY"
  else
    grep -q 'line 1' "$BODY" || { echo "no \"line 1\"" && return 1; }
    grep -q 'line 2' "$BODY" || { echo "no \"line 2\"" && return 1; }
    tail -n 1 "$BODY" | grep -q '"stream":"exit".*"exit_code":0' || { echo "no exit line with exit_code 0 at the end" && return 1; }
  fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_ports_free() {
  local i=0 p
  for p in "$CONTROL_PORT" "$WORKER_PORT"; do
    while port_in_use "$p"; do
      [ $i -lt 100 ] || fail "127.0.0.1:$p is in use; free it or set STACYVM_REMOTE_SMOKE_CONTROL_PORT / STACYVM_REMOTE_SMOKE_WORKER_PORT"
      sleep 0.1
      i=$((i + 1))
    done
  done
}

# start_process NAME CONFIG COMMAND: runs the binary in $SETUP_DIR with STACYVM_CONFIG=CONFIG.
start_process() {
  (
    cd "$SETUP_DIR"
    exec env "${UNSET_ENV[@]}" STACYVM_CONFIG="$2" "${BIN[@]}" "$3"
  ) >"$SETUP_DIR/$1.log" 2>&1 </dev/null &
  LAST_PID=$!
}

# --- certificates ---------------------------------------------------------------------------

TLS_CA="" TLS_SERVER_CERT="" TLS_SERVER_KEY="" TLS_CLIENT_CERT="" TLS_CLIENT_KEY=""

gen_cert() { # name CN extensions
  local d="$WORK/tls" err="$WORK/tls/openssl.err"
  "$OPENSSL" req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$d/$1.key" -out "$d/$1.csr" -subj "/CN=$2" 2>"$err" ||
    fail "openssl: $(cat "$err")"
  printf '%b' "$3" >"$d/$1.ext"
  "$OPENSSL" x509 -req -in "$d/$1.csr" -CA "$TLS_CA" -CAkey "$CA_KEY_USED" -CAcreateserial \
    -out "$d/$1.pem" -days 1 -sha256 -extfile "$d/$1.ext" 2>"$err" >/dev/null ||
    fail "openssl: $(cat "$err")"
}

prepare_tls() {
  step "prepare mTLS certificates"
  mkdir -p "$WORK/tls"
  TLS_CA=$CA_CERT
  CA_KEY_USED=$CA_KEY
  if [ -z "$TLS_CA" ]; then
    TLS_CA="$WORK/tls/ca.pem"
    CA_KEY_USED="$WORK/tls/ca.key"
    "$OPENSSL" req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -keyout "$CA_KEY_USED" -out "$TLS_CA" -days 1 -sha256 -subj "/CN=stacyvm-smoke-ca" \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      2>"$WORK/tls/openssl.err" || fail "openssl: $(cat "$WORK/tls/openssl.err")"
  fi
  if [ -n "$SERVER_CERT" ]; then
    TLS_SERVER_CERT=$SERVER_CERT TLS_SERVER_KEY=$SERVER_KEY
  else
    gen_cert server 127.0.0.1 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n'
    TLS_SERVER_CERT="$WORK/tls/server.pem" TLS_SERVER_KEY="$WORK/tls/server.key"
  fi
  if [ -n "$CLIENT_CERT" ]; then
    TLS_CLIENT_CERT=$CLIENT_CERT TLS_CLIENT_KEY=$CLIENT_KEY
  else
    gen_cert client stacyvm-control-plane 'extendedKeyUsage=clientAuth\n'
    TLS_CLIENT_CERT="$WORK/tls/client.pem" TLS_CLIENT_KEY="$WORK/tls/client.key"
  fi
  local given=""
  [ -z "$CA_CERT$SERVER_CERT$CLIENT_CERT" ] || given=" (some supplied)"
  echo "ok: mTLS certificates ready$given"
}

# --- one setup ------------------------------------------------------------------------------

write_configs() {
  local cp="$SETUP_DIR/control-plane.yaml" wk="$SETUP_DIR/worker.yaml"
  local cp_auth wk_auth
  case "$SETUP" in
  shared)
    local token
    token=$(secret)
    cp_auth="  worker_token: $(yq "$token")"
    wk_auth="  worker_token: $(yq "$token")"
    ;;
  per-worker)
    local token
    token=$(secret)
    cp_auth="  worker_tokens: [$(yq "$WORKER_ID=$token")]"
    wk_auth="  worker_token: $(yq "$token")"
    ;;
  signed)
    local key
    key=$(secret)
    cp_auth="  worker_signing_key: $(yq "$key")"
    wk_auth="  worker_signing_key: $(yq "$key")"
    ;;
  esac
  API_KEY=$(secret)
  ADMIN_KEY=$(secret)
  API_HDR="$SETUP_DIR/api.header"
  ADMIN_HDR="$SETUP_DIR/admin.header"
  printf 'X-API-Key: %s\n' "$API_KEY" >"$API_HDR"
  printf 'X-Admin-API-Key: %s\n' "$ADMIN_KEY" >"$ADMIN_HDR"

  local db_section
  if [ "$DB_DRIVER" = postgres ]; then
    # The DSN holds a password: it goes to a mode-600 file, never into a config or argv.
    printf '%s\n' "$DB_DSN" >"$SETUP_DIR/dsn"
    chmod 600 "$SETUP_DIR/dsn"
    db_section="  driver: \"postgres\"
  dsn_file: $(yq "$SETUP_DIR/dsn")"
  else
    db_section="  driver: \"sqlite\"
  path: $(yq "$SETUP_DIR/stacyvm.db")"
  fi

  cat >"$cp" <<EOF
server:
  host: "127.0.0.1"
  port: $CONTROL_PORT
providers:
  default: "mock"
  mock:
    enabled: true
    base_dir: $(yq "$SETUP_DIR/control-plane-mock")
  docker:
    enabled: false
auth:
  api_key: $(yq "$API_KEY")
  admin_api_key: $(yq "$ADMIN_KEY")
  admin_fallback_enabled: false
$cp_auth
database:
$db_section
logging:
  level: "info"
  format: "json"
EOF
  if [ "$MTLS" = 1 ]; then
    cat >>"$cp" <<EOF
worker:
  rpc_tls:
    enabled: true
    ca_file: $(yq "$TLS_CA")
    client_cert_file: $(yq "$TLS_CLIENT_CERT")
    client_key_file: $(yq "$TLS_CLIENT_KEY")
EOF
  fi

  cat >"$wk" <<EOF
worker:
  id: "$WORKER_ID"
  control_plane_url: "$CP_URL"
  listen_addr: "127.0.0.1:$WORKER_PORT"
  preview_domain: "localhost"
  heartbeat_interval: "1s"
  shutdown_timeout: "10s"
EOF
  if [ "$MTLS" = 1 ]; then
    cat >>"$wk" <<EOF
  rpc_tls:
    enabled: true
    server_cert_file: $(yq "$TLS_SERVER_CERT")
    server_key_file: $(yq "$TLS_SERVER_KEY")
    client_ca_file: $(yq "$TLS_CA")
EOF
  fi
  cat >>"$wk" <<EOF
providers:
  default: "mock"
  mock:
    enabled: true
    base_dir: $(yq "$SETUP_DIR/worker-mock")
  docker:
    enabled: false
auth:
$wk_auth
logging:
  level: "info"
  format: "json"
EOF
  chmod 600 "$cp" "$wk" "$API_HDR" "$ADMIN_HDR"
}

run_setup() {
  SETUP=$1
  SETUP_DIR="$WORK/$SETUP"
  mkdir -p "$SETUP_DIR"
  local describe i rc code
  case "$SETUP" in
  shared) describe="shared auth.worker_token on both sides" ;;
  per-worker) describe="control plane auth.worker_tokens [$WORKER_ID=...], worker its own auth.worker_token" ;;
  signed) describe="same auth.worker_signing_key on both sides, no static token" ;;
  esac
  echo "== $SETUP ($MODE): $describe"

  step "write configs"
  write_configs

  step "wait for free ports"
  wait_ports_free

  step "start the control plane"
  start_process control-plane "$SETUP_DIR/control-plane.yaml" serve
  CP_PID=$LAST_PID
  i=0
  while :; do
    alive "$CP_PID" || fail "stacyvm serve exited"
    http GET "$API/ready"
    [ "$HTTP_CODE" = 200 ] && break
    [ $i -lt $((WAIT_S * 5)) ] || fail "not ready within ${WAIT_S}s"
    sleep 0.2
    i=$((i + 1))
  done
  [ "$(json_get "$BODY" status)" = ready ] || fail "GET /ready did not say ready"
  ok "control plane ready on 127.0.0.1:$CONTROL_PORT (STACYVM_CONFIG=control-plane.yaml)"

  step "start the worker and wait for its registration"
  start_process worker "$SETUP_DIR/worker.yaml" worker
  WORKER_PID=$LAST_PID
  i=0
  while :; do
    alive "$WORKER_PID" || fail "stacyvm worker exited"
    http GET "$API/workers/$WORKER_ID"
    if [ "$HTTP_CODE" = 200 ] && [ "$(json_get "$BODY" status)" = online ] &&
      [ -n "$(json_get "$BODY" capacity.rpc_url)" ]; then break; fi
    [ $i -lt $((WAIT_S * 5)) ] || fail "$WORKER_ID did not register (online, with an rpc_url) within ${WAIT_S}s"
    sleep 0.2
    i=$((i + 1))
  done
  local rpc_url
  rpc_url=$(json_get "$BODY" capacity.rpc_url)
  case "$rpc_url" in
  "$RPC_SCHEME://"*) ;;
  *) fail "advertised rpc_url \"$rpc_url\" does not start with $RPC_SCHEME://" ;;
  esac
  ok "$WORKER_ID registered (status online, rpc_url $rpc_url)"

  if [ "$MTLS" = 1 ]; then
    step "worker RPC refuses callers without a client certificate"
    rc=0
    code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 --cacert "$TLS_CA" \
      -X POST "$rpc_url/rpc" 2>/dev/null) || rc=$?
    if [ "$rc" = 0 ] || [ "${code:-000}" != 000 ]; then
      fail "curl without a client certificate got HTTP $code from $rpc_url/rpc"
    fi
    rc=0
    code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 \
      "http://127.0.0.1:$WORKER_PORT/rpc" 2>/dev/null) || rc=$?
    if [ "$rc" = 0 ] || [ "${code:-000}" != 000 ]; then
      fail "plain-HTTP curl got HTTP $code from the worker RPC port"
    fi
    # Control: the same request with the client certificate reaches HTTP (and is refused there,
    # since it carries no worker credential), so the refusals above are the TLS layer's.
    rc=0
    code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 --cacert "$TLS_CA" \
      --cert "$TLS_CLIENT_CERT" --key "$TLS_CLIENT_KEY" -X POST "$rpc_url/rpc" 2>"$CURL_ERR") || rc=$?
    case "${code:-000}" in
    000) fail "even with the client certificate the TLS handshake failed: $(cat "$CURL_ERR")" ;;
    2*) fail "the worker RPC answered HTTP $code to a call without a worker token" ;;
    esac
    ok "worker RPC refuses curl without a client certificate and plain HTTP (with the certificate: HTTP $code)"
  fi

  step "remove the self-registered local worker"
  http DELETE "$API/admin/workers/local" "" "$ADMIN_HDR"
  expect_code 200 404
  ok "DELETE /admin/workers/local (HTTP $HTTP_CODE)"

  step "spawn a sandbox"
  http POST "$API/sandboxes" '{"image":"alpine:latest","provider":"mock","ttl":"5m"}'
  expect_code 201 200
  local id worker_id state
  id=$(json_get "$BODY" id)
  worker_id=$(json_get "$BODY" worker_id)
  state=$(json_get "$BODY" state)
  [ -n "$id" ] || fail "no sandbox id"
  [ "$worker_id" = "$WORKER_ID" ] || fail "placed on worker \"$worker_id\", not $WORKER_ID (did the local worker re-register in between?)"
  [ "$state" = running ] || fail "state is \"$state\", not running"
  ok "spawn placed $id on $WORKER_ID (state running)"
  local sb="$API/sandboxes/$id"

  step "get the sandbox"
  http GET "$sb"
  expect_code 200
  [ "$(json_get "$BODY" state)" = running ] || fail "state is not running"
  [ "$(json_get "$BODY" worker_id)" = "$WORKER_ID" ] || fail "worker_id is not $WORKER_ID"
  ok "GET sandbox (running on $WORKER_ID)"

  step "exec"
  http POST "$sb/exec" '{"command":"echo remote worker ok"}'
  expect_code 200
  [ "$(json_get "$BODY" exit_code)" = 0 ] || fail "exit_code is not 0"
  [ "$(json_get "$BODY" stdout)" = "remote worker ok" ] || fail "stdout is not \"remote worker ok\""
  ok "exec \"echo remote worker ok\" (exit_code 0, stdout matches)"

  step "streamed exec"
  http POST "$sb/exec" '{"command":"printf \"line 1\\nline 2\\n\"","stream":true}'
  expect_code 200
  case "$HTTP_CTYPE" in
  application/x-ndjson*) ;;
  *) fail "content type is \"$HTTP_CTYPE\", not application/x-ndjson" ;;
  esac
  local why
  why=$(check_stream) || fail "stream: $why"
  ok "streamed exec (NDJSON: \"line 1\", \"line 2\", exit line with exit_code 0)"

  step "file write"
  http POST "$sb/files" '{"path":"/workspace/remote.txt","content":"remote file"}'
  expect_code 200
  step "file read"
  http GET "$sb/files?path=/workspace/remote.txt"
  expect_code 200
  [ "$(cat "$BODY")" = "remote file" ] || fail "read back something other than \"remote file\""
  ok "file write and read back (/workspace/remote.txt)"

  step "logs"
  http GET "$sb/logs?lines=50"
  expect_code 200
  grep -q "$id" "$BODY" || fail "the logs do not mention $id"
  ok "logs"

  step "destroy"
  http DELETE "$sb"
  expect_code 200
  [ "$(json_get "$BODY" status)" = destroyed ] || fail "status is not destroyed"
  http GET "$sb"
  expect_code 404
  ok "destroy (then GET is 404)"

  step "drain $WORKER_ID"
  http POST "$API/admin/workers/$WORKER_ID/drain" "" "$ADMIN_HDR"
  expect_code 200
  ok "POST /admin/workers/$WORKER_ID/drain (status $(json_get "$BODY" status))"

  step "worker exits after the drain"
  i=0
  while alive "$WORKER_PID"; do
    [ $i -lt $((WAIT_S * 10)) ] || fail "the worker is still running ${WAIT_S}s after the drain"
    sleep 0.1
    i=$((i + 1))
  done
  rc=0
  wait "$WORKER_PID" || rc=$?
  WORKER_PID=""
  [ "$rc" = 0 ] || fail "the worker exited with status $rc"
  http GET "$API/workers/$WORKER_ID"
  expect_code 200
  ok "worker process exited 0 on its own (registry status $(json_get "$BODY" status))"

  step "stop the control plane"
  kill -TERM "$CP_PID"
  i=0
  while alive "$CP_PID"; do
    [ $i -lt $((WAIT_S * 10)) ] || fail "the control plane did not stop within ${WAIT_S}s of SIGTERM"
    sleep 0.1
    i=$((i + 1))
  done
  rc=0
  wait "$CP_PID" || rc=$?
  CP_PID=""
  [ "$rc" = 0 ] || fail "the control plane exited with status $rc"
  ok "control plane stopped (exit 0)"
  SETUP_DIR=""
}

# --- main -----------------------------------------------------------------------------------

echo "Remote worker smoke: ${BIN[*]} ($MODE, $DB_DRIVER store; control plane 127.0.0.1:$CONTROL_PORT, worker 127.0.0.1:$WORKER_PORT)"
if [ "$MTLS" = 1 ]; then prepare_tls; fi
for s in "${SETUPS[@]}"; do run_setup "$s"; done

joined=$(
  IFS=,
  echo "${SETUPS[*]}"
)
store_note=""
[ "$DB_DRIVER" = sqlite ] || store_note=", $DB_DRIVER"
echo "Remote worker smoke PASSED [$MODE$store_note] (${joined//,/, })"
