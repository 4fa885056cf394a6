"""The node's pure core: no Django, Celery or DRF import anywhere below here.

Everything in this package takes and returns plain values, bytes and
dataclasses and raises the exceptions defined in :mod:`chain.core.errors`, so
it can be tested and benchmarked without a database.
"""
