"""Branch a training curve: fork at a step with a new lr, then rewind the fork."""

import json
import sys

import gitruns as wandb


def train(run, steps, lr, loss):
    for step in steps:
        loss = loss * (1 - lr / 10)
        run.log({"loss": loss, "epoch": step // 10}, step=step)
    return loss


base = wandb.init(project="branching", config={"lr": 0.1})
wandb.define_metric("*", step_metric="epoch")
losses = {}
loss = 1.0
for step in range(100):
    loss = train(base, [step], wandb.config.lr, loss)
    losses[step] = loss
base.finish()

fork = wandb.init(
    project="branching",
    fork_from=f"{base.id}?_step=49",
    config={"lr": 0.5},
    allow_val_change=True,
)
assert wandb.run is fork and fork.step == 50, fork.step
train(fork, range(50, 100), wandb.config.lr, losses[49])
fork.finish()

by_epoch = wandb.init(project="branching", fork_from=f"{base.id}?epoch=3")
first_new = by_epoch.step
by_epoch.finish()

again = wandb.init(project="branching", resume_from=f"{fork.path}?_step=69")
assert again.id == fork.id and again.step == 70
train(again, range(70, 80), 0.05, 0.5)
again.finish()

try:
    wandb.init(project="branching", fork_from=f"{base.id}?_step=500")
except wandb.GitRunsError as exc:
    error = str(exc)
else:
    sys.exit("a fork past the last step was accepted")

print(
    json.dumps(
        {
            "base": base.id,
            "fork": fork.id,
            "by_epoch": by_epoch.id,
            "by_epoch_first_step": first_new,
            "error": error,
        }
    )
)
