#!/usr/bin/env bash
# The two set-up commands of the README:
#   ./dev.sh demo   run the demo shop on http://127.0.0.1:5000 (SQLite, Stripe emulator, in-process tasks)
#   ./dev.sh test   run the whole test suite (extra arguments go to pytest)
# and for maintainers: ./dev.sh lint (ruff + mypy), ./dev.sh security (bandit + pip-audit), ./dev.sh setup.
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}

setup() {
  [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
  local stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet -e ".[test]"
    touch "$stamp"
  fi
  "$VENV/bin/pybabel" compile --statistics -d shop/translations 2>&1 | tail -1
}

ensure_chromium() {
  [ -x /usr/bin/chromium ] && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Debian's chromium (and a CJK font) for the browser tests"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-wqy-microhei >/dev/null
    return 0
  fi
  return 1
}

case "${1:-}" in
  setup) setup ;;
  demo)
    setup
    exec "$VENV/bin/shop" demo serve "${@:2}"
    ;;
  test)
    setup
    markers=()
    if ! ensure_chromium; then
      if [ "${CI:-}" = true ]; then echo "chromium is missing: browser tests cannot run" >&2; exit 1; fi
      echo "NOTE: /usr/bin/chromium not found and not root: browser tests are NOT run" >&2
      markers=(-m "not browser")
    fi
    set +e
    "$VENV/bin/pytest" "${markers[@]}" "${@:2}"
    rc=$?
    set -e
    if [ "$rc" = 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi
    exit "$rc"
    ;;
  security)
    setup
    echo "bandit: shop/ and workers/ (skips and exceptions: [tool.bandit] in pyproject.toml, # nosec lines)"
    "$VENV/bin/bandit" -c pyproject.toml -q -r shop workers
    report=$(mktemp)
    set +e
    "$VENV/bin/pip-audit" --skip-editable --progress-spinner off -f json -o "$report" >/dev/null 2>&1
    rc=$?
    set -e
    # Fails on any known vulnerability; says plainly how many packages the index could not check.
    "$VENV/bin/python" - "$report" "$rc" <<'EOF'
import json, sys
report, rc = json.load(open(sys.argv[1])), int(sys.argv[2])
deps = report["dependencies"]
vulnerable = [d for d in deps if d.get("vulns")]
unchecked = [d for d in deps if "skip_reason" in d]
for d in vulnerable:
    ids = ", ".join(v["id"] for v in d["vulns"])
    print(f"pip-audit: {d['name']} {d['version']} has known vulnerabilities: {ids}")
print(f"pip-audit: {len(deps) - len(unchecked)} packages checked, {len(vulnerable)} vulnerable, "
      f"{len(unchecked)} not checkable (the package index gave no vulnerability data for them)")
sys.exit(1 if vulnerable or rc not in (0, 1) else 0)
EOF
    ;;
  lint)
    setup
    "$VENV/bin/ruff" check shop workers tests bench
    "$VENV/bin/ruff" format --check shop workers tests bench
    "$VENV/bin/mypy"
    ;;
  *)
    echo "usage: ./dev.sh demo | test [pytest args] | lint | security | setup" >&2
    exit 2
    ;;
esac
