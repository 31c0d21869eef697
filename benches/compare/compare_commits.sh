#!/usr/bin/env bash
# Compares the round trip (round_trip.rs, beside this script) of two
# commits, built side by side and run alternately, so both see the same
# machine:
#
#   bash benches/compare/compare_commits.sh BEFORE [AFTER] [PAIRS]
#
# AFTER defaults to HEAD, PAIRS to 11. Prints, per point, the median ns per
# operation of each and the median of the per-pair ratios AFTER/BEFORE with
# their range; then, if valgrind is installed, the exact user-space
# instructions per nop at batch 32 (callgrind, 2000 rounds minus 1000, so
# set-up cancels out). Uses temporary git worktrees; the working tree is
# untouched.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cd "$here/../.."
before=$1
after=${2:-HEAD}
pairs=${3:-11}
work=$(mktemp -d)
trap 'git worktree remove --force "$work/before" >/dev/null 2>&1 || true;
      git worktree remove --force "$work/after" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

for side in before after; do
    rev=$([ "$side" = before ] && echo "$before" || echo "$after")
    git worktree add --detach "$work/$side" "$rev" >/dev/null
    cp "$here/round_trip.rs" "$work/$side/examples/round_trip.rs"
    (cd "$work/$side" && cargo build -q --release --example round_trip)
done

run() { "$work/$1/target/release/examples/round_trip" "$2" "$3" "$4"; }
for kind in nop readv; do
    for batch in 1 8 32 128; do
        ops=$([ "$kind" = nop ] && echo 600000 || echo 150000)
        b=(); a=()
        for _ in $(seq "$pairs"); do
            b+=("$(run before "$kind" "$batch" $((ops / batch)))")
            a+=("$(run after "$kind" "$batch" $((ops / batch)))")
        done
        python3 - "$kind" "$batch" "${b[*]}" "${a[*]}" <<'PY'
import statistics as s, sys
kind, batch, b, a = sys.argv[1], sys.argv[2], list(map(float, sys.argv[3].split())), list(map(float, sys.argv[4].split()))
r = [y / x for x, y in zip(b, a)]
print(f"{kind} batch {batch}: before {s.median(b):.0f} ns/op, after {s.median(a):.0f} ns/op, "
      f"after/before {s.median(r):.2f} [{min(r):.2f}-{max(r):.2f}]")
PY
    done
done

instructions() {
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        "$work/$1/target/release/examples/round_trip" nop 32 "$2" 2>&1 >/dev/null |
        sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
if command -v valgrind >/dev/null; then
    for side in before after; do
        echo "$side: $(( ($(instructions $side 2000) - $(instructions $side 1000)) / 32000 )) instructions per nop at batch 32"
    done
fi
