#!/usr/bin/env bash
# Loads dags/batch_predict_daily.py with real Airflow and renders its task for one scheduled
# run, offline (scripts/check_dag.py says what is checked). Each Airflow line gets its own
# virtualenv, created on first use and reused after: .venv-airflow2/ and .venv-airflow3/.
# Needs python3 and PyPI on the first run only (pip takes several minutes per virtualenv);
# no database server, no Google credentials.
#
#   scripts/check_dag.sh [2|3|all]     (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."

# Pinned together because Airflow's constraint files are not on PyPI.
AIRFLOW2=(apache-airflow==2.10.5 apache-airflow-providers-google==18.1.0
          apache-airflow-providers-apache-beam==6.1.3)
AIRFLOW3=(apache-airflow==3.3.2 apache-airflow-providers-google==22.8.0
          apache-airflow-providers-apache-beam==6.3.1)

venv_with() {  # venv_with DIR PACKAGE... -> prints the venv's python
    local dir=$1; shift
    local stamp
    stamp="$dir/.installed-$(printf '%s\n' "$@" | cksum | cut -d' ' -f1)"
    if [ ! -f "$stamp" ]; then
        echo "check_dag: installing $* into $dir (first run: several minutes)" >&2
        [ -x "$dir/bin/python" ] || python3 -m venv "$dir"
        "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$@" >&2
        rm -f "$dir"/.installed-*
        touch "$stamp"
    fi
    echo "$dir/bin/python"
}

check() {  # check 2|3
    local python
    if [ "$1" = 2 ]; then
        python=$(venv_with .venv-airflow2 "${AIRFLOW2[@]}")
    else
        python=$(venv_with .venv-airflow3 "${AIRFLOW3[@]}")
    fi
    "$python" scripts/check_dag.py dags/batch_predict_daily.py
}

case "${1:-all}" in
    2|3) check "$1" ;;
    all) status=0; check 2 || status=1; check 3 || status=1; exit "$status" ;;
    *) echo "usage: scripts/check_dag.sh [2|3|all]" >&2; exit 2 ;;
esac
