#!/usr/bin/env bash
# Installs the lint tools (tools/lint, a package of its own) when missing or
# out of date, and prints the directory of their executables.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/tools/lint"
if [ ! -d "$tools/node_modules" ] || [ "$tools/package-lock.json" -nt "$tools/node_modules/.package-lock.json" ]; then
  echo "==> installing the lint tools (npm ci in tools/lint)" >&2
  npm ci --prefix "$tools" --no-audit --no-fund >&2
fi
echo "$tools/node_modules/.bin"
