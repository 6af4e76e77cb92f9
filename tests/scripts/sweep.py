"""A sweep-like loop: one run per learning rate in one process, with reinit."""

import json

import gitruns as wandb

ids = []
for lr in [0.3, 0.1, 0.03]:
    run = wandb.init(
        project="sweep",
        group="lr-sweep",
        job_type="sweep",
        config={"lr": lr, "optimizer": {"name": "sgd", "momentum": 0.9}},
        reinit=True,
        tags=["sweep"],
    )
    assert wandb.run is run
    wandb.config.setdefaults({"lr": 1.0, "epochs": 20})
    loss = 1.0
    for _ in range(wandb.config.epochs):
        loss *= 1 - wandb.config.lr / 2
        wandb.log({"loss": loss})
    wandb.summary["final_loss"] = loss
    ids.append(run.id)
    # The last run is left open: reinit finished the others, atexit finishes it.

print(json.dumps({"ids": ids}))
