"""A script run with W&B turned off: every call must still work and write nothing."""

import argparse
import json
import os

import gitruns as wandb

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.01)
args = parser.parse_args()

run = wandb.init(project="off", config=args, mode=os.environ.get("MODE", "disabled"))
wandb.define_metric("acc", summary="max")
for step in range(10):
    wandb.log({"acc": step / 10, "sample": wandb.Table(columns=["a"])})
wandb.summary["best"] = 0.9
wandb.config.update({"epochs": 3})
with open(os.path.join(run.dir, "notes.txt"), "w") as f:
    f.write("scratch")
saved = wandb.save("*.txt")
wandb.finish()
print(
    json.dumps(
        {
            "lr": wandb.config.lr if wandb.run else run.config.lr,
            "epochs": run.config["epochs"],
            "best": run.summary["best"],
            "disabled": run.disabled,
            "saved": saved,
            "run_after_finish": wandb.run is None,
        }
    )
)
