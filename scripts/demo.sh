#!/usr/bin/env bash
# Install greenmine with everything the demo needs, then run the demo.
#
#   bash scripts/demo.sh [--duration SECONDS]
#
# The demo runs on Mosquitto 2 (Debian package mosquitto), provisioned by
# 'greenmine broker init' with TLS and per-client ACLs. The package is installed
# with apt-get when missing, as root or through sudo; otherwise the one command to
# run is printed and the script stops. fonts-noto-cjk and pango are for the PDF
# reports (greenmine report ...) on the demo's data. Apart from that it needs no internet.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(mosquitto openssl fonts-noto-cjk libpango-1.0-0 libpangoft2-1.0-0)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    cmd="apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${missing[*]}"
    if [[ $(id -u) == 0 ]]; then
        echo "installing Debian packages: ${missing[*]}"
        bash -c "$cmd"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        echo "installing Debian packages with sudo: ${missing[*]}"
        sudo bash -c "$cmd"
    else
        echo "error: the demo needs the Debian packages: ${missing[*]}" >&2
        echo "install them with:  sudo bash -c '$cmd'" >&2
        exit 1
    fi
    # The package starts a system broker we do not use; the demo starts its own.
    if command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
        systemctl stop mosquitto 2>/dev/null || sudo -n systemctl stop mosquitto 2>/dev/null || true
    fi
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[all]'
exec .venv/bin/greenmine demo "$@"
