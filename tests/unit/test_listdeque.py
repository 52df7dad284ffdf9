"""ListDeque (pooler.listdeque), the pool's waiters and idle servers, against collections.deque."""

from __future__ import annotations

import random
from collections import deque

import pytest

from pooler.listdeque import ListDeque

pytestmark = pytest.mark.unit


class Item:
    """Compared by identity, as waiters and servers are."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __repr__(self) -> str:
        return f"Item({self.n})"


def same(ours: ListDeque, model: deque[Item]) -> None:
    assert len(ours) == len(model)
    assert bool(ours) is bool(model)
    assert list(ours) == list(model)
    if model:
        assert ours[0] is model[0] and ours[-1] is model[-1]
        assert ours.first() is model[0]


def test_fifo_and_lifo_orders() -> None:
    q = ListDeque()
    items = [Item(i) for i in range(5)]
    for item in items:
        q.append(item)
    assert q.popleft() is items[0]  # waiters: first come, first served
    assert q.pop() is items[4]  # idle servers: the warmest one
    assert list(q) == items[1:4]
    q.remove(items[2])
    assert list(q) == [items[1], items[3]]
    assert q.popleft() is items[1] and q.popleft() is items[3]
    assert not q and len(q) == 0 and list(q) == []


def test_empty_errors_match_deque() -> None:
    q = ListDeque()
    with pytest.raises(IndexError):
        q.popleft()
    with pytest.raises(IndexError):
        q.pop()
    with pytest.raises(IndexError):
        q[0]
    with pytest.raises(IndexError):
        q.first()
    with pytest.raises(ValueError):
        q.remove(Item(1))


def test_served_items_are_not_kept_alive() -> None:
    q = ListDeque()
    items = [Item(i) for i in range(10)]
    for item in items:
        q.append(item)
    served = q.popleft()
    assert all(kept is not served for kept in q.items)  # dropped, not just skipped


def test_memory_stays_bounded_under_a_steady_queue() -> None:
    q = ListDeque()
    for i in range(50):
        q.append(Item(i))
    for i in range(50, 20_050):  # 20,000 hand-offs with ~50 waiting throughout
        q.append(Item(i))
        assert q.popleft().n == i - 50
    assert len(q) == 50
    assert len(q.items) <= 3 * 50 + 64  # the served head is cut off as it grows


@pytest.mark.parametrize("seed", range(8))
def test_random_operations_match_deque(seed: int) -> None:
    rng = random.Random(seed)
    ours, model = ListDeque(), deque[Item]()
    counter = 0
    for _ in range(3_000):
        op = rng.random()
        if op < 0.45:
            counter += 1
            item = Item(counter)
            ours.append(item)
            model.append(item)
        elif op < 0.75:
            if model:
                assert ours.popleft() is model.popleft()
            else:
                with pytest.raises(IndexError):
                    ours.popleft()
        elif op < 0.88:
            if model:
                assert ours.pop() is model.pop()
            else:
                with pytest.raises(IndexError):
                    ours.pop()
        elif op < 0.89:
            ours.clear()  # a prepared-statement session linked to another server
            model.clear()
        elif model:
            victim = rng.choice(list(model))
            ours.remove(victim)
            model.remove(victim)
        same(ours, model)
