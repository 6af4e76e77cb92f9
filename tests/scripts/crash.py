"""A run that dies: an exception, or sys.exit with a code, part-way through."""

import sys

import gitruns as wandb

wandb.init(project="crashes", id=sys.argv[1], config={"how": sys.argv[2]})
for step in range(50):
    wandb.log({"loss": 1.0 / (step + 1)})
wandb.summary["seen"] = 50

if sys.argv[2] == "exception":
    raise RuntimeError("diverged at step 50")
if sys.argv[2] == "exit":
    sys.exit(3)
if sys.argv[2] == "interrupt":
    raise KeyboardInterrupt
