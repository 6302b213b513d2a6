"""Invariants and order conditions of every Butcher tableau (checked on the data, not by solving)."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from neuralode.solvers.tableaus import TABLEAUS, ButcherTableau

Tree = tuple  # a rooted tree = sorted tuple of its children's trees


@lru_cache(maxsize=None)
def trees(order: int) -> tuple[Tree, ...]:
    """All rooted trees with ``order`` nodes (1, 1, 2, 4, 9, 20, 48, 115 for orders 1..8)."""
    if order == 1:
        return ((),)
    out: set[Tree] = set()

    def forests(n: int, max_child: Tree | None) -> list[tuple[Tree, ...]]:
        # Multisets of trees with n nodes in total, children in non-increasing order (canonical form).
        if n == 0:
            return [()]
        res = []
        for k in range(1, n + 1):
            for child in trees(k):
                if max_child is not None and (_size(child), child) > (_size(max_child), max_child):
                    continue
                for rest in forests(n - k, child):
                    res.append((child,) + rest)
        return res

    for forest in forests(order - 1, None):
        out.add(tuple(sorted(forest, key=lambda c: (_size(c), c), reverse=True)))
    return tuple(sorted(out))


def _size(tree: Tree) -> int:
    return 1 + sum(_size(c) for c in tree)


def _gamma(tree: Tree) -> int:
    g = _size(tree)
    for c in tree:
        g *= _gamma(c)
    return g


def _stage_weights(tree: Tree, a: np.ndarray) -> np.ndarray:
    """Elementary weight vector: prod over children of (A @ child's vector); the leaf gives ones."""
    v = np.ones(a.shape[0])
    for child in tree:
        v = v * (a @ _stage_weights(child, a))
    return v


def _matrix(tab: ButcherTableau) -> np.ndarray:
    a = np.zeros((tab.stages, tab.stages))
    for i, row in enumerate(tab.a, start=1):
        a[i, :len(row)] = row
    return a


def _order_defects(weights: np.ndarray, a: np.ndarray, order: int, theta: float = 1.0) -> list[float]:
    return [abs(weights @ _stage_weights(tr, a) - theta ** _size(tr) / _gamma(tr))
            for p in range(1, order + 1) for tr in trees(p)]


def test_tree_counts():
    assert [len(trees(p)) for p in range(1, 9)] == [1, 1, 2, 4, 9, 20, 48, 115]


@pytest.mark.parametrize("name", list(TABLEAUS))
def test_structure(name):
    tab = TABLEAUS[name]
    s = tab.stages
    # Explicit: row i of A holds only the i coefficients of earlier stages.
    assert len(tab.a) == s - 1
    assert [len(row) for row in tab.a] == list(range(1, s))
    assert len(tab.b) == s and tab.c[0] == 0
    np.testing.assert_allclose(_matrix(tab).sum(axis=1), tab.c, atol=1e-14)
    assert sum(tab.b) == pytest.approx(1.0, abs=1e-14)
    if tab.adaptive:
        assert len(tab.b_error) == s
        assert sum(tab.b_error) == pytest.approx(0.0, abs=1e-14)
        assert tab.b_error2 is None or sum(tab.b_error2) == pytest.approx(0.0, abs=1e-14)
        assert tab.error_order is not None
    else:
        assert tab.error_order is None
    if tab.fsal:
        # The last stage is f(t + h, y_new): its row of A is b and it sits at c = 1.
        assert tab.c[-1] == 1 and tab.b[-1] == 0
        np.testing.assert_allclose(tab.a[-1], tab.b[:-1], atol=1e-15)
    if tab.reuse_last_stage:
        # Reused as the next step's first stage, so it must sit at t + h; its point is checked in the order test.
        assert tab.adaptive and not tab.fsal and tab.c[-1] == 1
    if tab.interpolation == "polynomial":
        # One row per stage, plus one for f(t + h, y_new) where that is not already the last stage.
        assert tab.dense is not None and (len(tab.dense) == s or (len(tab.dense) == s + 1 and not tab.fsal))
        assert tab.dense_order is not None


@pytest.mark.parametrize("name", list(TABLEAUS))
def test_order_conditions(name):
    tab = TABLEAUS[name]
    a = _matrix(tab)
    assert max(_order_defects(np.array(tab.b), a, tab.order)) < 1e-12
    # The next order must fail, else the declared order is understated.
    assert max(_order_defects(np.array(tab.b), a, tab.order + 1)) > 1e-6
    if tab.adaptive:
        b_low = np.array(tab.b) - np.array(tab.b_error)
        low_order = tab.error_order - 1 if tab.b_error2 is None else 5  # DOP853: 8th order, 5th-order estimate
        assert max(_order_defects(b_low, a, low_order)) < 1e-12
        assert max(_order_defects(b_low, a, low_order + 1)) > 1e-6
    if tab.b_error2 is not None:
        b_low2 = np.array(tab.b) - np.array(tab.b_error2)
        assert max(_order_defects(b_low2, a, 3)) < 1e-12
        assert max(_order_defects(b_low2, a, 4)) > 1e-6
    if tab.reuse_last_stage:
        # The reused stage's point y0 + h a[-1] @ k is an order-(p - 1) solution, O(h^p) from y_new: order p stays.
        assert max(_order_defects(np.array(tab.a[-1]), a[:-1, :-1], tab.order - 1)) < 1e-12


@pytest.mark.parametrize("name", [n for n, t in TABLEAUS.items() if t.dense is not None])
@pytest.mark.parametrize("theta", [0.1, 0.37, 0.5, 0.9, 1.0])
def test_dense_output_order(name, theta):
    tab = TABLEAUS[name]
    dense = np.array(tab.dense)
    w = dense @ theta ** np.arange(1, dense.shape[1] + 1)
    a = _matrix(tab)
    if len(dense) > tab.stages:  # the extra row weighs f(t + h, y_new): a stage whose row of A is b
        a = np.pad(a, ((0, 1), (0, 1)))
        a[-1, :-1] = tab.b
    # A continuous extension of order dense_order: order conditions in theta up to it, exact b at theta = 1.
    assert max(_order_defects(w, a, tab.dense_order, theta)) < 1e-12
    assert max(_order_defects(w, a, tab.dense_order + 1, theta)) > 1e-7 or theta == 1.0
    if theta == 1.0:
        np.testing.assert_allclose(w[:tab.stages], tab.b, atol=1e-13)
        np.testing.assert_allclose(w[tab.stages:], 0.0, atol=1e-13)
