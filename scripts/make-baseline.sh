#!/usr/bin/env bash
# scripts/make-baseline.sh COMMIT [DIR]: the library and the benchmarks of COMMIT (its qlnumba/
# and bench/) in DIR (default baseline/, which git ignores), for the "@baseline" option set of
# scripts/gpu-variants.sh: the same benchmark on that code in the same device call as the
# working tree's, an A/B on one card for a change that only the simulator and ptxas could check.
# The device machine copies an ignored folder only when the call names it: carry=["baseline"].
set -euo pipefail
cd "$(dirname "$0")/.."
COMMIT="${1:?usage: scripts/make-baseline.sh COMMIT [DIR]}"
DIR="${2:-baseline}"
rm -rf "$DIR"
mkdir -p "$DIR"
git archive "$COMMIT" qlnumba bench | tar -x -C "$DIR"
git rev-parse "$COMMIT" > "$DIR/COMMIT"
echo "baseline $(cat "$DIR/COMMIT") in $DIR"
