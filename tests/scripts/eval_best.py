"""An eval loop with define_metric: best accuracy, custom x axis, hidden metrics."""

import json
import math

import gitruns as wandb

with wandb.init(project="evals", config={"model": "resnet-ish", "lr": 3e-4}) as run:
    wandb.define_metric("epoch")
    wandb.define_metric("val/*", step_metric="epoch")
    wandb.define_metric("val/acc", summary="max", step_metric="epoch")
    wandb.define_metric("val/loss", summary="min,last")
    wandb.define_metric("train/loss", summary="mean")
    wandb.define_metric("train/seen", hidden=True)
    wandb.define_metric("debug/*", summary="none")
    wandb.define_metric("val/f1", summary="best", goal="maximize")

    seen = 0
    accs = [0.50, 0.71, 0.83, 0.79, 0.81]
    for epoch, acc in enumerate(accs):
        for batch in range(4):
            seen += 32
            loss = 1.0 / (1 + epoch * 4 + batch)
            wandb.log({"train/loss": loss, "train/seen": seen, "debug/lr": 0.1})
        wandb.log(
            {
                "val/acc": acc,
                "val/loss": 1 - acc,
                "val/f1": acc - 0.05,
                "epoch": epoch,
            }
        )
    live = {"val/acc": run.summary["val/acc"], "val/loss": run.summary["val/loss"]}
    wandb.summary["test/acc"] = 0.8
    print(json.dumps({"id": run.id, "live": live, "mean_ok": math.isfinite(loss)}))
