#!/bin/sh
# Debian packages the test suite needs beyond Python, installed only when missing, so that
# `make test` runs the same on a fresh CI machine as on a developer's. Idempotent: a second
# run installs nothing and does not touch the network. Sections are independent; add yours.
# Usage: tools/system-deps.sh [section ...]   (default: every section)
set -eu

need_update=1
apt_install() {
    # $@: packages; installs those not yet installed
    missing=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "system-deps: need root to install:$missing" >&2
        return 1
    fi
    if [ "$need_update" = 1 ]; then
        apt-get update -qq
        need_update=0
    fi
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
}

# ceph: a real S3-compatible store (Ceph RGW 16, Debian 12) for tests/archive/test_rgw.py.
# Its tests FAIL (never skip) when these binaries are missing.
section_ceph() {
    apt_install ceph-mon ceph-osd radosgw ceph-common
}

# chromium: the real-browser check of the Dagster UI (tests/defs/test_browser.py). Where CI is
# set, a missing Chromium fails that test instead of skipping it.
section_chromium() {
    apt_install chromium
}

# java: Java 17 for PySpark 4 (tests/analytics/test_engines.py reads the archive with Spark).
section_java() {
    if command -v java >/dev/null 2>&1 && java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])'; then
        return 0
    fi
    apt_install openjdk-17-jre-headless
}

# postgres: PostgreSQL 15 server binaries (/usr/lib/postgresql/15/bin) for the fleet's instance
# storage: tests/fleet start a throwaway cluster of their own (tests/support/postgres.py), and so
# does `make fleet`. Their tests FAIL (never skip) in CI when the binaries are missing.
section_postgres() {
    apt_install postgresql-15
}

sections="${*:-ceph chromium java postgres}"
for s in $sections; do
    "section_$s"
done
