#!/usr/bin/env bash
# BiFPN against NAS-FPN with the same backbone, data and budget, measured end to end:
#   train + evaluate each neck on the synthetic dataset (scripts/quickstart.py: config/quickstart.py
#   and config/quickstart_nasfpn.py), then params and multiply-adds (model_stats.py --json), forward
#   ms/img (benchmark_forward.py) and AP (the eval json), written to docs/necks.md + docs/necks.png.
#
#   scripts/compare_necks.sh [--set Class.field=value ...]    (the --set pairs apply to both necks)
#
# About 15-45 min on 2 shared cores (the quickstart recipe's epochs per neck, 1.5-5 min each). Runs go to
# experiments/necks_<neck>/ (not the quickstart's own experiment), measurements to
# experiments/necks/<neck>/. The timed span per neck is train + evaluate (+ generating
# data/synthetic/ for the first neck if it is missing). PYTHON overrides the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
NECKS=(bifpn:config/quickstart.py nasfpn:config/quickstart_nasfpn.py)
OUT=experiments/necks
ROUNDS=5

for item in "${NECKS[@]}"; do
    neck=${item%%:*} config=${item#*:}
    # A fresh run: the trainer would append to an old metrics.csv of the same experiment name.
    rm -rf "experiments/necks_$neck" "$OUT/$neck"
    mkdir -p "$OUT/$neck"
    sets=("$@" --set "General.name=necks_$neck")
    echo "== $neck: train and evaluate ($config), log in $OUT/$neck/quickstart.log"
    start=$(date +%s)
    "$PY" scripts/quickstart.py --config "$config" "${sets[@]}" > "$OUT/$neck/quickstart.log" 2>&1 \
        || { tail -n 20 "$OUT/$neck/quickstart.log"; exit 1; }
    echo $(( $(date +%s) - start )) > "$OUT/$neck/train_seconds"
    tail -n 1 "$OUT/$neck/quickstart.log"
    # The last epoch's COCO report (quickstart.py evaluates the final epoch only).
    cp "$(ls experiments/necks_$neck/eval-epoch*.json | sort | tail -n 1)" "$OUT/$neck/eval.json"
    "$PY" scripts/model_stats.py --config "$config" "${sets[@]}" --json > "$OUT/$neck/stats.json"
    echo "$config" > "$OUT/$neck/config"
    : > "$OUT/$neck/bench.txt"
done

# Rounds alternate between the necks so that load from other users falls on both alike.
for round in $(seq "$ROUNDS"); do
    for item in "${NECKS[@]}"; do
        neck=${item%%:*} config=${item#*:}
        "$PY" scripts/benchmark_forward.py --config "$config" "$@" --set "General.name=necks_$neck" \
            --iters 20 --warmup 3 | tee -a "$OUT/$neck/bench.txt"
    done
done

"$PY" scripts/necks_report.py --out docs/necks.md --plot docs/necks.png --load "$(cut -d' ' -f1-3 /proc/loadavg)" \
    "BiFPN=$OUT/bifpn" "NAS-FPN=$OUT/nasfpn"
