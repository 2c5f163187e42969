#!/usr/bin/env bash
# The Debian packages the tests and `make up` use: nginx (the edge), chromium + chromedriver (the
# status-page test), postgresql (the shared-registry tests), wrk and hyperfine (benchmarks),
# shellcheck (the GPU smoke script's lint).
# Installs what is missing when run as root; otherwise names what to install and fails.
set -euo pipefail
declare -A needs=(
  [nginx]=/usr/sbin/nginx
  [chromium]=/usr/bin/chromium
  [chromium-driver]=/usr/bin/chromedriver
  [postgresql]=/usr/lib/postgresql
  [wrk]=/usr/bin/wrk
  [hyperfine]=/usr/bin/hyperfine
  [shellcheck]=/usr/bin/shellcheck
)
missing=()
for package in "${!needs[@]}"; do
  [[ -e "${needs[$package]}" ]] || missing+=("$package")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "system packages missing: ${missing[*]}; install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts packaged services where it can; the project runs its own instances on other ports.
for service in nginx postgresql; do
  if command -v service >/dev/null && service "$service" status >/dev/null 2>&1; then
    service "$service" stop >/dev/null 2>&1 || true
  fi
done
