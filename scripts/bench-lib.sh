# Shared by scripts/bench.sh and scripts/profile-writes.sh (sourced, not run): building the
# release binaries and turning a shipped spec into its file-source twin. Expects ROOT and die().

# Builds etl-engine and the etl_bench helper (release); sets ENGINE and BENCH_BIN.
build_release_binaries() {
    cargo build --release --quiet --bin etl-engine
    ENGINE="${CARGO_TARGET_DIR:-$ROOT/target}/release/etl-engine"
    # The helper is a bench target; ask cargo where its executable is.
    BENCH_BIN=$(cargo build --release --quiet --bench etl_bench --message-format=json |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "etl_bench" and m.get("executable"):
        print(m["executable"])')
    [ -x "$BENCH_BIN" ] || die "could not build the etl_bench helper"
}

# file_spec SPEC INPUT OUT: writes SPEC with its source block replaced by a file source reading
# INPUT, everything else as is.
file_spec() {
    awk -v path="$2" '
        /^source:/ { print "source:\n  type: file\n  path: " path; skip = 1; next }
        skip && /^[^ #]/ { skip = 0 }
        !skip { print }' "$1" >"$3"
}
