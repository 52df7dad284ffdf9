"""A deque on a list: collections.deque's methods are calls by name from compiled code.

Compiled with the relay (pooler/hotpath.py): ``append``, ``popleft``, ``first`` and the
length are native operations there.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mypy_extensions import i64


class ListDeque:
    """A deque on a list and the index of its head: a pool's waiters (FIFO) and idle
    servers (LIFO at checkout, oldest first when closing), a prepared-statement session's
    requests awaiting replies (pooler.protocol.prepared).

    What ``collections.deque`` did here, with ``append``, ``pop`` and ``popleft`` as native
    list operations in the compiled build (a deque's methods are calls by name, two per
    transaction under load). The consumed head is cut off once it is half the list, so
    memory stays bounded and each item is moved O(1) times on average."""

    __slots__ = ("items", "head")

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.head: i64 = 0

    def __len__(self) -> int:
        return len(self.items) - self.head

    def __bool__(self) -> bool:
        return len(self.items) > self.head

    def __iter__(self) -> Iterator[Any]:
        return iter(self.items[self.head :])

    def __getitem__(self, index: int) -> Any:
        if index < 0:
            index += len(self)
        if index < 0 or index >= len(self):
            raise IndexError("ListDeque index out of range")
        return self.items[self.head + index]

    def first(self) -> Any:
        """The head item, which the caller knows is there (``queue[0]`` without the
        index arithmetic; IndexError when empty all the same)."""
        return self.items[self.head]

    def append(self, item: Any) -> None:
        self.items.append(item)

    def clear(self) -> None:
        self.items.clear()
        self.head = 0

    def popleft(self) -> Any:
        items = self.items
        head = self.head
        size: i64 = len(items)
        if head >= size:
            raise IndexError("pop from an empty ListDeque")
        item = items[head]
        head += 1
        if head == size:
            items.clear()  # emptied: start over at no cost
            head = 0
        elif head >= 32 and head * 2 >= size:
            del items[:head]
            head = 0
        else:
            items[head - 1] = None  # do not keep a served waiter alive
        self.head = head
        return item

    def pop(self) -> Any:
        """The newest item (deque.pop)."""
        items = self.items
        if len(items) <= self.head:
            raise IndexError("pop from an empty ListDeque")
        item = items.pop()
        if len(items) == self.head:
            items.clear()
            self.head = 0
        return item

    def remove(self, item: Any) -> None:
        """Take ``item`` out wherever it waits; ValueError if it does not (deque.remove)."""
        items = self.items
        for i in range(self.head, len(items)):
            if items[i] is item or items[i] == item:
                del items[i]
                if len(items) == self.head:
                    items.clear()
                    self.head = 0
                return
        raise ValueError("ListDeque.remove(x): x not in the queue")
