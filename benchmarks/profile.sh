#!/usr/bin/env bash
# Profile meshxmpp with py-spy during a max-load run and print the top functions.
#
#   bash benchmarks/profile.sh [extra run.py options, e.g. --duration 10 --clients 200]
#
# Samples the server process (py-spy record --pid, 100 Hz) only during the measurement
# window, writes the collapsed stacks to benchmarks/results/profile/meshxmpp-py-spy.txt and
# prints self time by module and by function, and total (inclusive) time by function.
# For a flame graph of the same window: py-spy record --format flamegraph (see README).
# py-spy's sampling costs the server a little CPU: don't compare these figures with a plain run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-python3}"
if ! command -v py-spy >/dev/null 2>&1; then
    "$PY" -m pip install --quiet py-spy
fi
out="$here/results/profile"
mkdir -p "$out"
rm -f "$out/meshxmpp-py-spy.txt"
"$PY" "$here/run.py" --servers meshxmpp --idle 0 --steady-rate 0 --profile "$out" \
    --output "$out/run.json" "$@"
echo
echo "== meshxmpp under max load: where the server's time goes (py-spy)"
"$PY" "$here/profile_top.py" "$out/meshxmpp-py-spy.txt" --top 25
