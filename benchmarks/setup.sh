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

stop_system_service() {
    local name="$1" pattern="$2"
    if command -v service >/dev/null 2>&1; then
        service "$name" stop >/dev/null 2>&1 || true
    fi
    # Without an init system the package's postinst may still have left a daemon behind:
    # end only the system instance (the one running with the package's default config).
    local pids
    pids=$(pgrep -f "$pattern" || true)
    for pid in $pids; do
        kill "$pid" 2>/dev/null || true
    done
}
stop_system_service prosody "^lua[0-9.]* /usr/bin/prosody"
# ejabberd's system node is named ejabberd@localhost (run as user ejabberd).
if command -v ejabberdctl >/dev/null 2>&1; then
    (cd / && timeout 20 ejabberdctl stop >/dev/null 2>&1) || true
fi
stop_system_service ejabberd "beam.*-sname ejabberd@localhost"
# epmd started by the package for the system node is harmless; our instances share it.

# Keep them from starting at boot where an init system exists.
if command -v update-rc.d >/dev/null 2>&1; then
    update-rc.d prosody disable >/dev/null 2>&1 || true
    update-rc.d ejabberd disable >/dev/null 2>&1 || true
fi
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now prosody ejabberd >/dev/null 2>&1 || true
fi

python -m pip install --quiet py-spy >/dev/null 2>&1 || echo "setup.sh: py-spy not installed (profile.sh needs it)" >&2

echo "setup.sh: prosody $(prosody --version 2>/dev/null | head -1 || echo '?'); ejabberd $(dpkg-query -W -f='${Version}' ejabberd 2>/dev/null || echo '?')"
