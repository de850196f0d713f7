#!/usr/bin/env bash
# Starts nginx + Nchan with loadtest/nchan/nginx.conf, in the foreground, as the current user:
#
#   bash loadtest/nchan/run.sh [LISTEN]        # LISTEN defaults to 127.0.0.1:8090
#
# Installs Debian's nginx and libnginx-mod-nchan first when they are missing.
set -euo pipefail
cd "$(dirname "$0")"

LISTEN="${1:-127.0.0.1:8090}"
MODULE=/usr/lib/nginx/modules/ngx_nchan_module.so
if ! command -v nginx >/dev/null || [[ ! -f "$MODULE" ]]; then
    SUDO=""
    [[ $(id -u) -eq 0 ]] || SUDO=sudo
    $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
    $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq nginx libnginx-mod-nchan >/dev/null
fi

PREFIX="${NCHAN_PREFIX:-$(mktemp -d -t wheresmyfox-nchan.XXXXXX)}"
mkdir -p "$PREFIX"
sed -e "s#@PREFIX@#$PREFIX#g" -e "s#@LISTEN@#$LISTEN#g" nginx.conf >"$PREFIX/nginx.conf"
echo "nginx + Nchan on $LISTEN (prefix $PREFIX)" >&2
exec nginx -p "$PREFIX" -c "$PREFIX/nginx.conf"
