# Sourced by the set-up scripts: create (or reuse) .venv and install qlnumba into it.
#   ensure_venv [EXTRAS]      e.g. ensure_venv test   ->  pip install -e ".[test]"
# PYTHON picks the interpreter that creates the venv (default python3).
ensure_venv() {
    local spec="."
    [ -n "${1:-}" ] && spec=".[$1]"
    if [ ! -x .venv/bin/python ]; then
        "${PYTHON:-python3}" -m venv .venv
    fi
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e "$spec"
}
