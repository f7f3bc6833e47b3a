#!/usr/bin/env bash
# Make sure the Debian programs the project needs are on PATH; install them with apt when we
# are root and they are missing, otherwise say exactly what to install.
#   usage: tools/system-deps.sh redis-server redis-tools [nutcracker]
set -euo pipefail
declare -A BIN=( [redis-server]=redis-server [redis-tools]=redis-cli [nutcracker]=nutcracker )
missing=()
for pkg in "$@"; do
    bin=${BIN[$pkg]:-$pkg}
    command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing with apt: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Debian starts a system redis-server/nutcracker on install where an init system runs;
    # we start our own on free ports, so stop those if they came up.
    for svc in redis-server nutcracker; do
        command -v service >/dev/null 2>&1 && service "$svc" stop >/dev/null 2>&1 || true
    done
    exit 0
fi
echo "error: missing programs: ${missing[*]}" >&2
echo "install them first, e.g.: sudo apt-get install ${missing[*]}" >&2
exit 1
