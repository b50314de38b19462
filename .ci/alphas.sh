#!/usr/bin/env bash
# CI: the Datasette plugin on both ends of the alphas it supports. Each alpha gets a venv of its
# own (.ci/venv-<version>, gitignored) with eventsink installed; .ci/alpha_check.py runs a real
# `datasette serve` sender on it against a receiver and checks every event arrives once, with no
# failed or hung request. The newest also checks the takeover from datasette-events-forward.
# Run from .ci/run inside its venv (the receiver and the check script use that environment).
set -euo pipefail
cd "$(dirname "$0")/.."

# The floor is the one pyproject names; keep OLDEST in step with it.
OLDEST=$(python - <<'PY'
import re, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["datasette"]
print(re.search(r"datasette>=([^,;\s\"]+)", " ".join(deps)).group(1))
PY
)
NEWEST=${EVENTSINK_NEWEST_ALPHA:-$(python -c "import datasette; print(datasette.__version__)")}

check() {  # check VERSION [--legacy]
    local version=$1; shift
    local venv=.ci/venv-$version
    if [ ! -x "$venv/bin/datasette" ] || [ "$("$venv/bin/datasette" --version | awk '{print $NF}')" != "$version" ]; then
        rm -rf "$venv"
        python -m venv "$venv"
        "$venv/bin/pip" install -q "datasette==$version" -e .
    fi
    if [ "${1:-}" = "--legacy" ]; then
        "$venv/bin/pip" install -q datasette-events-forward
    fi
    timeout 300 python .ci/alpha_check.py "$venv/bin/datasette" "$@"
}

check "$OLDEST"
check "$NEWEST" --legacy
