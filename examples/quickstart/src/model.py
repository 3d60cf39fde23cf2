"""Logistic regression trained with mini-batch gradient descent, in plain Python."""

import math

from src.data import sigmoid


def init():
    return {"w": [0.0, 0.0], "b": 0.0}


def predict(model, x):
    return sigmoid(model["w"][0] * x[0] + model["w"][1] * x[1] + model["b"])


def train_epoch(model, rows, lr, batch_size):
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        gw = [0.0, 0.0]
        gb = 0.0
        for x, y in batch:
            err = predict(model, x) - y
            gw[0] += err * x[0]
            gw[1] += err * x[1]
            gb += err
        n = len(batch)
        model["w"][0] -= lr * gw[0] / n
        model["w"][1] -= lr * gw[1] / n
        model["b"] -= lr * gb / n


def evaluate(model, rows):
    loss = 0.0
    correct = 0
    for x, y in rows:
        p = min(max(predict(model, x), 1e-12), 1 - 1e-12)
        loss -= y * math.log(p) + (1 - y) * math.log(1 - p)
        correct += (p >= 0.5) == (y == 1)
    return loss / len(rows), correct / len(rows)
