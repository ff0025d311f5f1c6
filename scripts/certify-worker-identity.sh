#!/usr/bin/env bash
# Worker identity certification: a thin wrapper around `stacyvm worker token certify`.
#
# Usage: scripts/certify-worker-identity.sh [worker-id] [--format text|json|markdown] [--output f]
#          [--signing-key-file f] [--ttl 5m]
#
# Every argument is passed through. The binary is $STACYVM_BIN (an executable, or a .js entry point
# run with node), else the repo's built CLI packages/server/dist/cli/main.js (`npm run build`).
# The report never contains the token or a key; the exit status is the command's (0 pass,
# 1 a check failed, 2 usage mistake). See scripts/README.md.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN=${STACYVM_BIN:-$SCRIPT_DIR/../packages/server/dist/cli/main.js}

case "$BIN" in
*.js | *.mjs)
  if [ ! -f "$BIN" ]; then
    echo "certify-worker-identity: $BIN is missing; run \`npm run build\` at the repo root, or set STACYVM_BIN" >&2
    exit 2
  fi
  command -v node >/dev/null 2>&1 || {
    echo "certify-worker-identity: node is required to run $BIN" >&2
    exit 2
  }
  exec node "$BIN" worker token certify "$@"
  ;;
*)
  exec "$BIN" worker token certify "$@"
  ;;
esac
