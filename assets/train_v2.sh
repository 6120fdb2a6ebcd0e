#!/usr/bin/env bash
# The shipped model's training, as it was run (2026-11-29/30; see MODEL_CARD.md): three parts on one run folder,
# each resuming the one before, on one thread of a 2-core x86_64 CPU (torch 2.13.0+cpu, bf16 autocast).
# --time-limit is the run's total in minutes, so each resume restarts the cosine where that total puts it.
# The third part was stopped with Ctrl-C at 264 minutes (the trainer validates and checkpoints first);
# runs/v2/best then held the weights copied to assets/. Run from the repository root:  bash assets/train_v2.sh
set -euo pipefail
export OMP_NUM_THREADS=1
python -m bitlm.cli.train --corpus shakespeare --preset base --amp --time-limit 100 --out runs/v2
python -m bitlm.cli.train --resume runs/v2 --time-limit 195 --lr 6e-4 --min-lr 3e-5
python -m bitlm.cli.train --resume runs/v2 --time-limit 290 --lr 3e-4 --min-lr 1e-5   # Ctrl-C at 264 minutes
# Then: held-out figures, the gate's floors, and the weights in place of the shipped ones.
python -m bench.quality --skip-equal-budget --threads 2 --model runs/v2
python -m bitlm.cli.gate calibrate --model runs/v2/best
