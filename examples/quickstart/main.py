"""cloudrun quickstart: logistic regression on a small generated data set.

Runs the same on a laptop (`python3 main.py`), under `cloudrun-launch --local` and on a
cloud GPU VM. Knobs, flags first, then the environment, then the defaults:

    --epochs N       EPOCHS       (8)
    --batch-size N   BATCHSIZE    (32)
    --lr X           LR           (0.5)
    EPOCH_PAUSE_SECS (0.3): a pause per epoch, so that the logs stream visibly

Writes checkpoint/epoch-NNN.json after every epoch (a temporary file renamed into place,
so a reader never sees half a checkpoint) and resumes from the newest one.
"""

import argparse
import glob
import json
import os
import sys
import time

from src import data, model

HERE = os.path.dirname(os.path.abspath(__file__))
CHECKPOINTS = os.path.join(HERE, "checkpoint")


def knobs():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=int(os.environ.get("EPOCHS", "8")))
    p.add_argument("--batch-size", type=int, default=int(os.environ.get("BATCHSIZE", "32")))
    p.add_argument("--lr", type=float, default=float(os.environ.get("LR", "0.5")))
    return p.parse_args()


def newest_checkpoint():
    files = sorted(glob.glob(os.path.join(CHECKPOINTS, "epoch-*.json")))
    return files[-1] if files else None


def save(state, epoch):
    os.makedirs(CHECKPOINTS, exist_ok=True)
    path = os.path.join(CHECKPOINTS, f"epoch-{epoch:03d}.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def main():
    args = knobs()
    rows = data.load(os.path.join(HERE, "data", "points.csv"))
    train, valid = data.split(rows)
    state = {"epoch": 0, "model": model.init()}
    last = newest_checkpoint()
    if last:
        with open(last) as f:
            state = json.load(f)
        print(f"resuming from {os.path.relpath(last, HERE)} (epoch {state['epoch']})")
    else:
        print(f"training from scratch: {len(train)} train / {len(valid)} validation points")
    pause = float(os.environ.get("EPOCH_PAUSE_SECS", "0.3"))
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        model.train_epoch(state["model"], train, args.lr, args.batch_size)
        loss, acc = model.evaluate(state["model"], valid)
        state.update(epoch=epoch, valid_loss=round(loss, 6), valid_accuracy=round(acc, 4))
        path = save(state, epoch)
        print(
            f"epoch {epoch}/{args.epochs}  loss {loss:.4f}  accuracy {acc:.1%}  "
            f"saved {os.path.relpath(path, HERE)}",
            flush=True,
        )
        time.sleep(pause)
    print(f"done: {args.epochs} epochs, final accuracy {state.get('valid_accuracy', 0):.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
