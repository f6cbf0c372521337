#!/usr/bin/env bash
# Rewrites every file the formatters own: Prettier for TypeScript,
# JavaScript, JSON and Markdown, clang-format for the native code.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(bash scripts/lint-tools.sh)"
"$bin/prettier" --write --log-level warn '**/*.{ts,mjs,js,json,md}'
if command -v clang-format >/dev/null; then
  git ls-files -z 'plugins/*/native/*.cc' 'plugins/*/native/*.h' | xargs -0 -r clang-format -i
else
  echo "clang-format is not installed (apt-get install clang-format): native code not formatted" >&2
fi
