"""The data set: two noisy clusters of 2-D points, labelled 0 and 1.

`python3 -m src.data` regenerates data/points.csv (deterministic: a fixed seed).
"""

import csv
import math
import os
import random

POINTS = 400
SEED = 7


def generate(path, n=POINTS, seed=SEED):
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = i % 2
        cx, cy = (1.0, 1.0) if label else (-1.0, -0.5)
        rows.append((cx + rng.gauss(0, 0.9), cy + rng.gauss(0, 0.9), label))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["x1", "x2", "label"])
        for x1, x2, y in rows:
            w.writerow([f"{x1:.6f}", f"{x2:.6f}", y])


def load(path):
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        return [((float(row["x1"]), float(row["x2"])), int(row["label"])) for row in r]


def split(rows, valid_fraction=0.25):
    cut = int(len(rows) * (1 - valid_fraction))
    return rows[:cut], rows[cut:]


def sigmoid(z):
    if z < -60:
        return 0.0
    return 1.0 / (1.0 + math.exp(-z))


if __name__ == "__main__":
    generate(os.path.join(os.path.dirname(__file__), "..", "data", "points.csv"))
