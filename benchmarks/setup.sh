#!/usr/bin/env bash
# Install the reference servers (Prosody, ejabberd) and the profiler for the benchmark.
# Idempotent. The Debian packages start their system services on install; we stop them
# again, because the benchmark starts its own instances with their own configs and ports.
set -euo pipefail

need=()
command -v prosody >/dev/null 2>&1 || need+=(prosody)
[ -x /usr/sbin/ejabberdctl ] || command -v ejabberdctl >/dev/null 2>&1 || need+=(ejabberd)

if [ "${#need[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
        apt-get update
        apt-get install -y --no-install-recommends "${need[@]}"
    fi
fi

# The packages' own daemons, if their postinst started them: stop them through the init script
# when there is one, else by the pid they recorded. Our benchmark instances are not touched.
if command -v service >/dev/null 2>&1; then
    service prosody stop >/dev/null 2>&1 || true
    service ejabberd stop >/dev/null 2>&1 || true
fi
for pidfile in /run/prosody/prosody.pid /var/run/prosody/prosody.pid; do
    if [ -s "$pidfile" ]; then
        kill "$(cat "$pidfile")" 2>/dev/null || true
    fi
done
# ejabberd's system node is ejabberd@localhost; ask it to stop if it runs.
if [ -x /usr/sbin/ejabberdctl ] && (cd / && timeout 20 /usr/sbin/ejabberdctl status >/dev/null 2>&1); then
    (cd / && timeout 30 /usr/sbin/ejabberdctl stop >/dev/null 2>&1) || true
fi
# (the epmd daemon the package may have started is harmless: our ejabberd nodes register there)

# Keep them from starting at boot where an init system exists.
if command -v update-rc.d >/dev/null 2>&1; then
    update-rc.d prosody disable >/dev/null 2>&1 || true
    update-rc.d ejabberd disable >/dev/null 2>&1 || true
fi
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now prosody ejabberd >/dev/null 2>&1 || true
fi

PY="${PYTHON:-python3}"
"$PY" -m pip install --quiet py-spy >/dev/null 2>&1 || echo "setup.sh: py-spy not installed (profile.sh needs it)" >&2
# uvloop makes the load generator cheaper, so more of the machine is left to the server. Optional.
"$PY" -m pip install --quiet uvloop >/dev/null 2>&1 || echo "setup.sh: uvloop not installed (the load generator falls back to asyncio)" >&2

# (not `prosody --version`: Prosody 0.12 has no such flag and would start a server)
echo "setup.sh: prosody $(dpkg-query -W -f='${Version}' prosody 2>/dev/null || echo '?'), ejabberd $(dpkg-query -W -f='${Version}' ejabberd 2>/dev/null || echo '?')"
