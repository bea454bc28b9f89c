#!/usr/bin/env bash
# Install everything the test suite needs, then run all of it.
#
#   bash scripts/test.sh [pytest args...]
#
# The suite runs with CI=true unless CI is set: a missing service fails its test
# instead of skipping it (CI=false lets a developer skip what the machine lacks).
#
# - Debian packages: mosquitto (MQTT broker), victoria-metrics (time-series store
#   speaking InfluxDB's /api/v2/write), socat (pty pairs for RTU tests), mbpoll,
#   openssl (test certificates), systemd (systemd-analyze verify for deploy/systemd),
#   chromium and chromium-driver (the console tests in a headless browser, driven by
#   selenium), fonts-noto-cjk, poppler-utils and pango (the PDF
#   reports: CJK fonts, pdftoppm/pdftotext checks, WeasyPrint's text layout).
#   Installed with apt-get when missing, as root or through sudo; otherwise the
#   exact command to run is printed and the script stops.
# - Python: a virtual environment in .venv with greenmine[test] (editable).
set -euo pipefail
cd "$(dirname "$0")/.."
export CI="${CI:-true}"  # it installed every service: one still missing is a broken install

PKGS=(mosquitto victoria-metrics socat mbpoll openssl systemd chromium chromium-driver fonts-noto-cjk poppler-utils libpango-1.0-0 libpangoft2-1.0-0)
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
        echo "error: the tests need the Debian packages: ${missing[*]}" >&2
        echo "install them with:  sudo bash -c '$cmd'" >&2
        exit 1
    fi
    # The Debian packages start system services we do not use; the tests start their own.
    for svc in mosquitto victoria-metrics; do
        if command -v systemctl >/dev/null && systemctl is-active --quiet "$svc" 2>/dev/null; then
            systemctl stop "$svc" 2>/dev/null || sudo -n systemctl stop "$svc" 2>/dev/null || true
        fi
    done
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
