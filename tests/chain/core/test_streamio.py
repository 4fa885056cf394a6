"""Reading ahead on a thread of its own: order kept, errors handed over, an early stop stops the producer."""

import threading

import pytest

from chain.core.streamio import read_ahead


def test_items_arrive_in_order_from_the_producer_thread():
    threads = set()

    def produce():
        for i in range(50):
            threads.add(threading.current_thread().name)
            yield i

    assert list(read_ahead(produce(), depth=3)) == list(range(50))
    assert threads == {"read-ahead"}


def test_an_error_in_the_producer_reaches_the_consumer_after_the_items_before_it():
    def produce():
        yield 1
        yield 2
        raise ValueError("block 3 is corrupt")

    items = read_ahead(produce(), depth=1)
    assert [next(items), next(items)] == [1, 2]
    with pytest.raises(ValueError, match="block 3"):
        next(items)


def test_a_consumer_that_stops_early_stops_the_producer():
    produced = []

    def produce():
        for i in range(10_000):
            produced.append(i)
            yield i

    items = read_ahead(produce(), depth=2)
    assert next(items) == 0
    items.close()
    assert len(produced) < 10
    assert not any(t.name == "read-ahead" for t in threading.enumerate())
