#!/usr/bin/env bash
# CI: the dependency floors pyproject declares are true. Every runtime dependency is pinned to
# the lowest version pyproject admits (`pkg>=X` becomes `pkg==X`) in a venv of its own
# (.ci/venv-floors, gitignored), and the quick test loop runs there. A floor that fails here is
# false: raise it to the lowest version that passes. The Datasette floor is .ci/alphas.sh's.
# Run from .ci/run inside its venv (tomllib needs Python 3.11; the venv's Python is used).
set -euo pipefail
cd "$(dirname "$0")/.."

python - > .ci/floors.txt <<'PY'
import re, tomllib
for requirement in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([^,;\s]+)\s*", requirement)
    if match is None:
        raise SystemExit(f"floors: cannot read a floor from {requirement!r}")
    print(f"{match.group(1)}=={match.group(2)}")
PY
echo "floors: $(tr '\n' ' ' < .ci/floors.txt)"
venv=.ci/venv-floors
if [ ! -x "$venv/bin/python" ]; then
    python -m venv "$venv"
fi
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q -c .ci/floors.txt -e '.[test]'
"$venv/bin/pip" check
# With sqlite-utils at its floor (3.x) pip takes the newest Datasette that allows it (1.0a35),
# whose in-process API lacks invoke_shutdown (1.0a40): the in-process plugin tests are left to
# the main run, and the plugin on old alphas to .ci/alphas.sh. Datasette receivers started as
# processes still run here, on that older alpha.
"$venv/bin/python" -m pytest -q -m "not slow" -p no:cacheprovider \
    --ignore=tests/datasette -k "not TestOldOutboxInDatasette"
