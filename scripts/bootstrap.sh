#!/bin/bash
# Install and start everything boinc-vm's demo and tests need, idempotently.
#
# Safe to run again and again: each step checks first and does nothing when its
# work is already done, so a second run takes a couple of seconds.
# Usage: scripts/bootstrap.sh [--services]
#   --services  also start MariaDB and RabbitMQ (with its STOMP plugin) when down
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
    boinc-client                      # the real BOINC client the tests drive
    qemu-system-x86 qemu-utils        # the QEMU hypervisor driver
    debootstrap extlinux syslinux-common fdisk mtools genisoimage dosfstools  # appliance build
    python3-twisted                   # guest agent tests under the appliance's Python + Twisted 22.4
    binutils libpython3.11            # PyInstaller (vmwrapper build-exe) needs objdump and the shared libpython
    chromium                          # status page tests (headless browser)
)

log() { printf '[bootstrap] %s\n' "$*"; }

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# The virtualenv: rebuilt only when pyproject.toml changes.
PY=${PYTHON:-python3}
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
    log "creating the virtualenv in .venv"
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v '^WARNING: Location' || true
    .venv/bin/python -c 'import twisted, coilmq, pymysql, stomp' # fail loudly if the install failed
    rm -f .venv/.installed-*
    touch "$stamp"
fi

if [ "${1:-}" = "--services" ]; then
    if ! mariadb -h 127.0.0.1 -u root -e 'select 1' >/dev/null 2>&1; then
        log "starting MariaDB"
        start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
        for _ in $(seq 60); do mariadb -h 127.0.0.1 -u root -e 'select 1' >/dev/null 2>&1 && break; sleep 1; done
    fi
    if command -v rabbitmqctl >/dev/null; then
        if ! rabbitmqctl -q status >/dev/null 2>&1; then
            log "starting RabbitMQ"
            rabbitmq-server -detached
            rabbitmqctl -q wait --timeout 120 "$(ls -d /var/lib/rabbitmq/mnesia/rabbit@*.pid 2>/dev/null | head -1 || echo /dev/null)" >/dev/null 2>&1 || sleep 10
        fi
        if ! rabbitmq-plugins -q list -e rabbitmq_stomp 2>/dev/null | grep -q rabbitmq_stomp; then
            log "enabling RabbitMQ's STOMP plugin"
            rabbitmq-plugins -q enable rabbitmq_stomp >/dev/null
        fi
    fi
fi
log "ready"
