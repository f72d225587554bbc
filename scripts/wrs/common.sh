# Helpers sourced by the scripts/wrs/*.sh drivers (not run on its own).
# ROOT: the repository root; PY: the interpreter (PYTHON, else .venv/bin/python, else python3).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-$([ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}

# abs PATH: PATH made absolute against the current directory.
abs() { case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$PWD/$1" ;; esac; }

# usage SCRIPT FIRST LAST: print the script's header comment lines FIRST..LAST.
usage() { sed -n "$2,$3p" "$1" | sed 's/^# \{0,1\}//'; }

# need_value "$@": fail with one line unless the option in $1 has a value.
need_value() { [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; }; }

# cfg_value CONFIG KEY [SET ...]: one config value (e.g. OptimizeParam.schedule.end_epoch).
cfg_value() {
    "$PY" -c 'import functools, sys
from utils.config import load_config
from utils.errors import run_cli
run_cli(lambda: print(functools.reduce(getattr, sys.argv[2].split("."), load_config(sys.argv[1], sys.argv[3:]))))' "$@"
}

# num_classes ROIDB: the number of categories of a roidb cache.
num_classes() {
    "$PY" -c 'import sys
from core.dataset import load_roidb
from utils.errors import run_cli
run_cli(lambda: print(len(load_roidb(sys.argv[1])[1])))' "$1"
}
