#!/usr/bin/env bash
# Dependency audit: cargo-deny against deny.toml — licenses, bans (duplicate versions, banned
# crates), sources (crates.io only) and, when the RustSec advisory database can be had, advisories.
#
# cargo-deny itself is installed from crates.io into ~/.cargo/bin (pinned below) when it is missing
# or another version; that build takes a few minutes once per machine.
#
# The advisory database is a git repository on github.com, and no package registry ships it. So:
#   - github.com reachable:   cargo-deny fetches the database and runs every check;
#   - ETL_ADVISORY_DB=<path>: a local git copy of the database is used instead of github.com
#                             (its newest commit date is printed: a stale copy misses advisories);
#   - otherwise:              advisories are skipped with a loud message, the other checks still run.
#                             ETL_REQUIRE_ADVISORIES=1 turns that skip into a failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CARGO_DENY_VERSION=0.20.2
ADVISORY_DB_URL=https://github.com/RustSec/advisory-db
STALE_DAYS=90 # cargo-deny's own maximum-db-staleness default

if [ "$(cargo deny --version 2>/dev/null || true)" != "cargo-deny $CARGO_DENY_VERSION" ]; then
    echo "==> installing cargo-deny $CARGO_DENY_VERSION from crates.io (once per machine)"
    # cargo-deny's release profile asks for fat LTO and one codegen unit: several more minutes on
    # two cores for a tool that runs for seconds. Its own target dir, not the project's.
    env -u CARGO_TARGET_DIR CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
        cargo install --locked --force --quiet cargo-deny --version "=$CARGO_DENY_VERSION"
fi

deny() { cargo deny check --hide-inclusion-graph "$@"; }

skip_advisories() {
    local why=$1
    echo "##############################################################################"
    echo "### ADVISORIES CHECK SKIPPED: $why"
    echo "### Known vulnerabilities (RustSec) were NOT checked. Licenses, bans and sources"
    echo "### were. To run it: give this machine github.com, or ETL_ADVISORY_DB=<git copy of"
    echo "### $ADVISORY_DB_URL>."
    echo "##############################################################################"
    if [ "${ETL_REQUIRE_ADVISORIES:-0}" = 1 ]; then
        echo "ETL_REQUIRE_ADVISORIES=1: failing" >&2
        exit 1
    fi
}

if [ -n "${ETL_ADVISORY_DB:-}" ]; then
    db=$(cd "$ETL_ADVISORY_DB" && pwd)
    newest=$(git -C "$db" log -1 --format=%cI)
    age_days=$((($(date +%s) - $(git -C "$db" log -1 --format=%ct)) / 86400))
    echo "==> advisory database: local copy $db, newest commit $newest ($age_days days old)"
    if [ "$age_days" -gt "$STALE_DAYS" ]; then
        echo "### WARNING: the local advisory database is $age_days days old; advisories published since are not checked."
    fi
    # cargo-deny clones/fetches $ADVISORY_DB_URL with the git CLI; point that URL at the local copy.
    GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0="url.file://$db.insteadOf" GIT_CONFIG_VALUE_0="$ADVISORY_DB_URL" \
        deny advisories bans licenses sources
elif GIT_TERMINAL_PROMPT=0 timeout 20 git ls-remote --exit-code "$ADVISORY_DB_URL" HEAD >/dev/null 2>&1; then
    deny advisories bans licenses sources
else
    deny bans licenses sources
    skip_advisories "the RustSec advisory database ($ADVISORY_DB_URL) cannot be fetched: github.com is not reachable from this machine."
fi
