"""A PyTorch-style training loop written for W&B, run on gitruns unchanged.

The model is a small numpy MLP so that the test needs no deep-learning
framework; the W&B calls are the ones such scripts make.
"""

import argparse
import json
import os

import numpy as np

import gitruns as wandb


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api-key", default="secret", help="kept out of config")
    return parser.parse_args()


class MLP:
    def __init__(self, n_in, hidden, n_out, rng):
        self.w1 = rng.normal(0, 0.5, (n_in, hidden))
        self.w2 = rng.normal(0, 0.5, (hidden, n_out))

    def parameters(self):
        return [self.w1, self.w2]

    def forward(self, x):
        self.h = np.tanh(x @ self.w1)
        logits = self.h @ self.w2
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def step(self, x, y, lr):
        p = self.forward(x)
        loss = -np.log(p[np.arange(len(y)), y] + 1e-12).mean()
        grad = p.copy()
        grad[np.arange(len(y)), y] -= 1
        grad /= len(y)
        g2 = self.h.T @ grad
        g1 = x.T @ ((grad @ self.w2.T) * (1 - self.h**2))
        self.w1 -= lr * g1
        self.w2 -= lr * g2
        return loss, float(np.sqrt((g1**2).sum() + (g2**2).sum()))


def main():
    args = parse_args()
    run = wandb.init(
        project="mlp",
        entity="my-team",
        config=args,
        config_exclude_keys=["api_key"],
        tags=["baseline", "numpy"],
        notes="two-layer MLP on blobs",
        group="mlp-blobs",
        job_type="train",
        save_code=True,
        settings=wandb.Settings(start_method="thread", _disable_stats=True),
    )
    config = wandb.config

    rng = np.random.default_rng(config.seed)
    centers = rng.normal(0, 2, (3, 4))
    y = rng.integers(0, 3, 600)
    x = centers[y] + rng.normal(0, 1, (600, 4))
    x_train, y_train, x_val, y_val = x[:480], y[:480], x[480:], y[480:]

    model = MLP(4, config["hidden"], 3, rng)
    wandb.watch(model, log="all", log_freq=10)
    wandb.config.update({"n_params": sum(w.size for w in model.parameters())})

    best = 0.0
    for epoch in range(config.epochs):
        order = rng.permutation(len(x_train))
        for i in range(0, len(order), config.batch_size):
            batch = order[i : i + config.batch_size]
            loss, grad_norm = model.step(x_train[batch], y_train[batch], config.lr)
            wandb.log({"train/loss": loss, "train/grad_norm": np.float32(grad_norm)})
        acc = float((model.forward(x_val).argmax(axis=1) == y_val).mean())
        wandb.log(
            {
                "val/acc": acc,
                "epoch": epoch,
                "examples": wandb.Image(x_val[:4], caption="inputs"),
            }
        )
        if acc > best:
            best = acc
            wandb.run.summary["best_val_acc"] = best

    with open("model_card.md", "w") as card:
        card.write(f"# MLP\n\nbest validation accuracy {best:.3f}\n")
    wandb.save("model_card.md")
    with open(os.path.join(wandb.run.dir, "weights.json"), "w") as out:
        json.dump({"w1": model.w1.tolist()}, out)

    print(json.dumps({"id": run.id, "path": run.path, "best": best, "step": run.step}))
    wandb.finish()


if __name__ == "__main__":
    main()
