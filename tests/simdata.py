"""The simulator's objects, generated once per worker and copied for each simulator after.

Generating a merchant's orders and payments is most of what an in-process harvest test
spends (some 0.3 s of CPU for three merchants over four months, under coverage), and most
tests ask for the same merchants, seed and months. The same settings give the same objects
byte for byte (harvester/simulator/data.py), so `generate` is kept here by its arguments, as
marshal bytes: every simulator still gets objects of its own, which it may sort or edit.
"""

from __future__ import annotations

import functools
import marshal
from datetime import datetime

from harvester.simulator import data
from harvester.simulator.data import Object

_generate = data.generate


# The arguments of `data.generate`, in its order.
Settings = tuple[int, str, str, datetime, datetime, float]


@functools.lru_cache(maxsize=64)  # a few MB each at most; 64 hold every common scenario
def _generated(settings: Settings) -> bytes:
    return marshal.dumps(_generate(*settings))


def generate_once(
    seed: int,
    merchant_id: str,
    type: str,
    data_start: datetime,
    data_end: datetime,
    objects_per_day: float,
) -> list[Object]:
    """`data.generate`, from this worker's copy when it has made these objects before."""
    made = _generated((seed, merchant_id, type, data_start, data_end, objects_per_day))
    objects: list[Object] = marshal.loads(made)  # noqa: S302 (bytes this process wrote)
    return objects
