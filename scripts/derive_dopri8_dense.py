"""Derive dopri8's 6th-order continuous extension and print it as the rows of ``_DP8_DENSE`` in tableaus.py.

DOP853's own 7th-order dense output needs 3 extra function evaluations per step. This one uses only what every
step already computes: stage 1, stages 6-12 and f(t + h, y_new) (the next step's first stage). Its weights
``b_i(theta) = sum_k x_k[i] theta^k`` (k = 1..7) satisfy every order condition up to order 6 for all theta:
``x_k`` solves the conditions of the trees with k nodes (right-hand side 1/gamma) and is 0 on the others. The
conditions leave one free direction ``n``; ``x_k += alpha_k n`` with ``sum(alpha)`` fixed so that
``b(1) = b``, and alpha minimises the order-7 defects over theta in [0, 1] plus a tiny penalty on the size of
the coefficients (without it they reach 2e4 and float32 interpolation loses 3 digits; with it they stay near
415 for 40% more order-7 defect).

    python scripts/derive_dopri8_dense.py
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from neuralode.solvers.tableaus import DOPRI8

ORDER = 6
DEGREE = 7
SIZE_PENALTY = 1e-12
# Stages 2-5 have b = 0 and, as in DOP853's own dense output, weight 0 here too; the last is f(t + h, y_new).
USED = [0, 5, 6, 7, 8, 9, 10, 11, 12]


@lru_cache(maxsize=None)
def trees(n: int) -> tuple[tuple, ...]:
    """Rooted trees with n nodes, each a sorted tuple of its subtrees (grown by adding a leaf anywhere)."""
    if n == 1:
        return ((),)

    def grown(tree: tuple) -> set[tuple]:
        out = {tuple(sorted(tree + ((),)))}
        for i, child in enumerate(tree):
            out |= {tuple(sorted(tree[:i] + (g,) + tree[i + 1:])) for g in grown(child)}
        return out
    return tuple(sorted(set().union(*(grown(t) for t in trees(n - 1)))))


def size(tree: tuple) -> int:
    return 1 + sum(size(c) for c in tree)


def gamma(tree: tuple) -> int:
    return size(tree) * int(np.prod([gamma(c) for c in tree]))


def weights(tree: tuple, a: np.ndarray) -> np.ndarray:
    v = np.ones(len(a))
    for child in tree:
        v = v * (a @ weights(child, a))
    return v


def main() -> None:
    s = DOPRI8.stages
    a = np.zeros((s + 1, s + 1))  # the 12 stages plus f(t + h, y_new), whose row is b
    for i, row in enumerate(DOPRI8.a, start=1):
        a[i, :i] = row
    b = np.array(DOPRI8.b + (0.0,))
    a[s, :s] = b[:s]
    tr = [t for p in range(1, ORDER + 1) for t in trees(p)]
    m = np.array([weights(t, a)[USED] for t in tr])
    n = np.linalg.svd(m)[2][-1]
    x = np.zeros((DEGREE, len(USED)))
    b_used = b[USED]
    for k in range(1, ORDER + 1):
        x[k - 1] = np.linalg.lstsq(m, np.array([1 / gamma(t) if size(t) == k else 0.0 for t in tr]), rcond=None)[0]
    shift = (b_used - x.sum(0)) @ n  # b - sum_k x_k is a multiple of n
    # Order-7 defect of theta: sum_k theta^k (c[k] + alpha_k d) - theta^7 g, squared and integrated over [0, 1].
    t7 = trees(7)
    p7 = np.array([weights(t, a)[USED] for t in t7])
    g = np.array([1 / gamma(t) for t in t7])
    c, d = x @ p7.T, p7 @ n
    target = -c
    target[DEGREE - 1] += g
    powers = np.arange(1, DEGREE + 1)
    gram = 1.0 / (powers[:, None] + powers[None, :] + 1)
    quad = (d @ d) * gram + SIZE_PENALTY * np.eye(DEGREE)
    lin = gram @ (target @ d) - SIZE_PENALTY * (x @ n)
    kkt = np.block([[quad, -np.ones((DEGREE, 1))], [np.ones((1, DEGREE)), np.zeros((1, 1))]])
    alpha = np.linalg.solve(kkt, np.concatenate([lin, [shift]]))[:DEGREE]
    x += alpha[:, None] * n[None, :]
    x[-1] = b_used - x[:-1].sum(0)  # b(1) = b to rounding
    full = np.zeros((s + 1, DEGREE))
    full[USED] = x.T
    for row in full:
        values = [repr(float(v)) for v in row]
        print(f"    [0.0] * {DEGREE}," if not row.any() else
              "    [" + ", ".join(values[:4]) + ",\n     " + ", ".join(values[4:]) + "],")


if __name__ == "__main__":
    main()
