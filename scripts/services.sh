#!/usr/bin/env bash
# Make sure the services the tests talk to are up: RabbitMQ (5672), PostgreSQL (5432), and the
# tools for the browser and compose tests. Starts what is installed; installs (apt, as root) what
# is missing. Safe to run again.
set -uo pipefail
export DEBIAN_FRONTEND=noninteractive

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
apt_install() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "services: please install $* (needs root and apt-get)" >&2; return 1
  fi
  if [ -z "${APT_UPDATED:-}" ]; then apt-get update -qq || true; APT_UPDATED=1; fi
  apt-get install -y -qq --no-install-recommends "$@"
}

if ! port_open 5672; then
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  rabbitmq-server -detached || true
  for _ in $(seq 1 90); do port_open 5672 && break; sleep 1; done
fi
port_open 5672 || { echo "services: RabbitMQ did not come up on 5672" >&2; exit 1; }

if ! port_open 5432; then
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  for _ in $(seq 1 30); do port_open 5432 && break; sleep 1; done
fi

command -v chromium >/dev/null || apt_install chromium || echo "services: chromium unavailable (browser test skips)" >&2
command -v docker-compose >/dev/null || apt_install docker-compose || echo "services: docker-compose unavailable (compose test skips)" >&2
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || apt_install fonts-dejavu-core \
  || echo "services: fonts-dejavu-core unavailable (OCR tests on rendered text skip)" >&2
exit 0
