#!/usr/bin/env bash
# System (Debian) packages the tests need beyond Python, by section:
#   bash tools/system-deps.sh java [section ...]
# Each section is self-contained and idempotent: it checks first and installs only what is missing.
set -euo pipefail

# java: PySpark 4 (tests/analytics/test_engines.py reads the archive with Spark) needs Java 17+.
section_java() {
    if command -v java >/dev/null 2>&1 && java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])'; then
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq openjdk-17-jre-headless >/dev/null
    java -version
}

if [ "$#" -eq 0 ]; then
    echo "usage: $0 SECTION... (sections: $(declare -F | sed -n 's/^declare -f section_//p' | tr '\n' ' '))" >&2
    exit 2
fi
for section in "$@"; do
    if ! declare -F "section_$section" >/dev/null; then
        echo "$0: no section '$section'" >&2
        exit 2
    fi
    "section_$section"
done
