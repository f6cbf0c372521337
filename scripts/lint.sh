#!/usr/bin/env bash
# The house rules, checked: formatting (Prettier, clang-format), ESLint with
# type information and the layering rule, shellcheck, and a clean npm tree.
# `npm run format` fixes what the formatters own.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(bash scripts/lint-tools.sh)"
failed=()
step() {
  local name=$1
  shift
  printf '\033[1m==> %s\033[0m\n' "$name"
  if ! "$@"; then failed+=("$name"); fi
}

# ESLint reads the types of the compiled plugin API (plugins import vmdevd/plugin-api).
[ -f dist/src/plugin-api.d.ts ] || npx tsc -b
step "prettier (npm run format fixes it)" "$bin/prettier" --check --log-level warn '**/*.{ts,mjs,js,json,md}'
step "clang-format (npm run format fixes it)" bash -c \
  "git ls-files -z 'plugins/*/native/*.cc' 'plugins/*/native/*.h' | xargs -0 -r clang-format --dry-run --Werror"
step "eslint" "$bin/eslint" --max-warnings 0 .
step "shellcheck" bash -c "shellcheck scripts/*.sh .ci/run"
step "npm ls (the dependency tree)" bash -c "npm ls --all >/dev/null && npm ls --prefix tools/lint --all >/dev/null"

if [ ${#failed[@]} -gt 0 ]; then
  printf 'lint failed: %s\n' "${failed[*]}" >&2
  exit 1
fi
echo "lint: all clean"
