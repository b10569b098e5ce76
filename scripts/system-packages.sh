#!/usr/bin/env bash
# Installs the Debian packages some tests need, when absent: PostgreSQL (the shared Optuna study) and Chromium
# (the HTML report opened in a real browser). Idempotent; runs `apt-get update` once, only when installing.
# Where apt-get is unavailable or fails (no root, no network), it says so and returns 0: the tests that need
# these programs are then skipped with a loud reason.
set -u
need=()
command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
    echo "system-packages: cannot install ${need[*]} (needs apt-get as root); the tests that need them are skipped." >&2
    exit 0
fi
echo "system-packages: installing ${need[*]} ..." >&2
if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"; } >/tmp/synthaug-apt.log 2>&1; then
    echo "system-packages: apt-get failed (see /tmp/synthaug-apt.log); the tests that need ${need[*]} are skipped." >&2
fi
exit 0
