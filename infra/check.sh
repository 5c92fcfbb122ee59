#!/usr/bin/env bash
# Infra checks, run by .ci/run (and by hand): no Azure access, no Bicep CLI needed.
#   1. every .bicep file under infra/ parses with pycep-parser (the parser checkov uses);
#      a syntax error fails the run and names the file;
#   2. checkov's Bicep checks pass (CKV_PARSE_ERROR_FAIL=true: without it checkov exits 0 on a
#      file it cannot parse).
# Both tools live in their own venv, .venv-infra at the repository root (override: INFRA_VENV),
# built from infra/requirements-checks.txt and rebuilt only when that file changes.
#
# Usage: infra/check.sh [python]    python: interpreter to build the venv with (default: python3)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
base_python="${1:-python3}"
venv="${INFRA_VENV:-$root/.venv-infra}"
requirements="$here/requirements-checks.txt"
start=$SECONDS

# --- venv, idempotent: reused while requirements-checks.txt is unchanged -----------------------
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
stamp="$venv/.requirements.sha256"
if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "== infra: building $venv from infra/requirements-checks.txt"
  rm -rf "$venv"
  "$base_python" -m venv "$venv"
  log="$(mktemp)"
  if ! "$venv/bin/python" -m pip install --disable-pip-version-check --quiet -r "$requirements" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    echo "infra: pip install failed" >&2
    exit 1
  fi
  rm -f "$log"
  echo "$want" >"$stamp"
else
  echo "== infra: reusing $venv"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# --- 1. parse every Bicep file -----------------------------------------------------------------
# Also writes a mirror of infra/ for checkov with the `extension ...` lines blanked (pycep-parser
# 0.5.1 predates that keyword; see infra/tools/parse_bicep.py). Line numbers are unchanged.
echo "== infra: parse Bicep with pycep-parser $("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("pycep-parser"))')"
"$venv/bin/python" "$here/tools/parse_bicep.py" "$here" --mirror "$work/infra"

# --- 2. checkov --------------------------------------------------------------------------------
echo "== infra: checkov $("$venv/bin/checkov" --version) (bicep)"
(
  cd "$work"
  CKV_PARSE_ERROR_FAIL=true "$venv/bin/checkov" -d infra --framework bicep --skip-download --quiet --compact
)

echo "infra: all checks passed in $((SECONDS - start)) s"
