#!/usr/bin/env bash
# Runs the property tests (tests/properties.rs and the SQS XML parser's) in release mode with
# many cases: PROPTEST_CASES=${CASES:-100000}. Prints one line per target: cases, time, result.
# PROFILE=debug reuses the debug build `cargo test` made (a quick check of the script itself,
# or a short run when there is no time for the release build).
set -euo pipefail
cd "$(dirname "$0")/.."

cases=${CASES:-100000}
export PROPTEST_CASES=$cases
profile=${PROFILE:-release}
case $profile in
    release) flags=(--release) ;;
    debug) flags=() ;;
    *) echo "PROFILE must be release or debug, not $profile" >&2; exit 2 ;;
esac

# Build first, so the timings below are the tests' alone.
cargo test "${flags[@]}" --test properties --no-run --quiet
cargo test "${flags[@]}" --lib --no-run --quiet

integration=(
    decode_never_panics_nor_quotes_the_body
    decode_accepts_every_json_value
    decode_chain_never_panics_nor_quotes
    decode_chain_round_trip
    process_random_bytes_row_or_clean_reject
    process_random_json_row_or_clean_reject
    process_login_fields_of_random_types_never_quote_values
    spec_loader_random_yaml_errors_have_position_or_key_path
    spec_loader_mutated_logins_errors_have_position_or_key_path
    spec_loader_mutated_purchases_errors_have_position_or_key_path
    keyring_random_json_errors_hide_key_material
    keyring_mutations_errors_hide_key_material
    version_encode_keeps_semver_order_and_round_trips
    version_encode_random_strings_never_panic
    vault_round_trip_binds_column_and_token
)
xml=source::sqs_query::response::tests::props
lib=(
    "$xml::prop_random_bytes_never_panic"
    "$xml::prop_random_xml_trees_never_panic"
    "$xml::prop_generated_receive_round_trips"
    "$xml::prop_truncated_receive_is_an_error_without_body"
    "$xml::prop_mutated_receive_never_panics"
)

failed=0
run() { # target name, cargo selector...
    local name=$1 start end log
    shift
    log=$(mktemp)
    start=$(date +%s.%N)
    if cargo test "${flags[@]}" --quiet "$@" -- --exact "$name" >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
        failed=1
    fi
    end=$(date +%s.%N)
    # A filter that matches nothing "passes" with 0 tests: report it rather than a fake ok.
    grep -q "1 passed" "$log" || [ "$result" = FAILED ] || result="NOT RUN (0 tests matched)"
    printf '%-62s cases=%-7s %-7s %7.1fs %s\n' "${name##*::}" "$cases" "$profile" "$(awk "BEGIN { print $end - $start }")" "$result"
    [ "$result" = ok ] || sed 's/^/    /' "$log" | tail -40
    rm -f "$log"
}

for t in "${integration[@]}"; do run "$t" --test properties; done
for t in "${lib[@]}"; do run "$t" --lib; done
exit $failed
