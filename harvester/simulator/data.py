"""The simulated merchants' orders and payments: deterministic, generated lazily, versioned.

Every merchant and type gets its own `random.Random`, seeded from (seed, merchant, type),
so the same settings give the same objects byte for byte, whatever else the simulator
draws. Edits never change a stored object: they add a version, so a snapshot taken at
some instant can be recomputed later.
"""

from __future__ import annotations

import bisect
import random
import string
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

TYPES = ("PAYMENTS", "ORDERS")
FILTER_FIELDS = ("createdTime", "modifiedTime")
ID_ALPHABET = string.ascii_uppercase + string.digits
ID_LENGTH = 13

_MENU = (
    ("Espresso", 300),
    ("Cappuccino", 450),
    ("Latte", 475),
    ("Cold Brew", 425),
    ("Bagel", 350),
    ("Croissant", 395),
    ("Breakfast Sandwich", 850),
    ("Avocado Toast", 1100),
    ("Soup of the Day", 700),
    ("Club Sandwich", 1250),
    ("Caesar Salad", 1150),
    ("Cookie", 250),
)
_NOTES = ("no onions", "extra hot", "to go", "birthday", "allergy: nuts", "table 4")
_CARD_TYPES = ("VISA", "MC", "AMEX", "DISCOVER")
_TAX_RATE = 0.08
_EVERYTHING = (-(2**63), 2**63 - 1)

Object = dict[str, Any]


def random_id(rng: random.Random) -> str:
    """A Clover-style id: 13 uppercase letters and digits."""
    return "".join(rng.choices(ID_ALPHABET, k=ID_LENGTH))


def epoch_ms(instant: datetime) -> int:
    return int(instant.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Staff:
    """The few employees, devices and the card tender one merchant's objects refer to."""

    employee_ids: tuple[str, ...]
    device_ids: tuple[str, ...]
    tender_id: str

    @classmethod
    def hire(cls, rng: random.Random) -> Staff:
        return cls(
            employee_ids=tuple(random_id(rng) for _ in range(rng.randint(2, 6))),
            device_ids=tuple(random_id(rng) for _ in range(rng.randint(1, 3))),
            tender_id=random_id(rng),
        )


def make_object(rng: random.Random, type: str, created_ms: int, staff: Staff) -> Object:
    """One order or payment created at `created_ms`, in Clover's shape."""
    common = {
        "id": random_id(rng),
        "createdTime": created_ms,
        # The device's clock runs a little behind the server's.
        "clientCreatedTime": created_ms - rng.randint(0, 5_000),
        # Payments settle and orders lock a little after creation.
        "modifiedTime": created_ms + rng.randint(0, 120_000),
        "employee": {"id": rng.choice(staff.employee_ids)},
        "device": {"id": rng.choice(staff.device_ids)},
    }
    if type == "ORDERS":
        picks = rng.choices(_MENU, k=rng.randint(1, 4))
        line_items = [
            {"id": random_id(rng), "name": name, "price": price, "printed": True}
            for name, price in picks
        ]
        subtotal = sum(price for _, price in picks)
        order: Object = {
            **common,
            "currency": "USD",
            "total": subtotal + round(subtotal * _TAX_RATE),
            "state": "locked",
            "paymentState": "PAID",
            "lineItems": {"elements": line_items},
        }
        if rng.random() < 0.1:
            order["note"] = rng.choice(_NOTES)
        return order
    if type == "PAYMENTS":
        amount = rng.randint(250, 15_000)
        return {
            **common,
            "order": {"id": random_id(rng)},
            "amount": amount,
            "tipAmount": rng.choice((0, 0, round(amount * 0.15), round(amount * 0.2))),
            "taxAmount": round(amount * _TAX_RATE / (1 + _TAX_RATE)),
            "result": "SUCCESS",
            "tender": {"id": staff.tender_id, "label": "Credit Card"},
            "cardTransaction": {
                "cardType": rng.choice(_CARD_TYPES),
                "last4": f"{rng.randrange(10_000):04d}",
                "type": "AUTH",
            },
        }
    raise ValueError(f"unknown type {type!r}")


def generate(
    seed: int,
    merchant_id: str,
    type: str,
    data_start: datetime,
    data_end: datetime,
    objects_per_day: float,
) -> list[Object]:
    """All objects of one merchant and type, createdTime spread over [data_start, data_end).

    Busy and quiet days alternate: each day's count is the average times a seeded
    factor between 0.5 and 1.5, pro rata for a partial first or last day.
    """
    rng = random.Random(f"{seed}/{merchant_id}/{type}")
    staff = Staff.hire(rng)
    objects: list[Object] = []
    day_start = data_start
    while day_start < data_end:
        day_end = min(day_start + timedelta(days=1), data_end)
        share = (day_end - day_start) / timedelta(days=1)
        count = round(objects_per_day * share * rng.uniform(0.5, 1.5))
        low, high = epoch_ms(day_start), epoch_ms(day_end)
        for created_ms in sorted(rng.randrange(low, high) for _ in range(count)):
            objects.append(make_object(rng, type, created_ms, staff))
        day_start = day_end
    return objects


@dataclass(slots=True)
class _Series:
    """One merchant's objects of one type, sorted by the filter field, with their edits."""

    base: list[Object]
    keys: list[int]
    by_id: dict[str, Object]
    edits: dict[str, list[Object]] = field(default_factory=dict)


class Dataset:
    """Every merchant's objects, generated on first use and cached.

    Queries take `as_of_ms`: an object exists once its createdTime has come, and
    shows its latest version whose modifiedTime has come.
    """

    def __init__(
        self,
        seed: int,
        data_start: datetime,
        data_end: datetime,
        objects_per_day: float,
        filter_field: str,
    ) -> None:
        if filter_field not in FILTER_FIELDS:
            raise ValueError(f"filter_field must be one of {FILTER_FIELDS}, got {filter_field!r}")
        self._seed = seed
        self._data_start = data_start
        self._data_end = data_end
        self._objects_per_day = objects_per_day
        self._filter_field = filter_field
        self._series: dict[tuple[str, str], _Series] = {}

    def objects(
        self, merchant_id: str, type: str, start_ms: int, end_ms: int, as_of_ms: int
    ) -> list[Object]:
        """Versions as of `as_of_ms` whose filter field is in [start_ms, end_ms], sorted by it."""
        series = self._load(merchant_id, type)
        field_name = self._filter_field
        low = bisect.bisect_left(series.keys, start_ms)
        high = bisect.bisect_right(series.keys, end_ms)
        found = [
            obj
            for obj in series.base[low:high]
            if obj["createdTime"] <= as_of_ms and obj["id"] not in series.edits
        ]
        if series.edits:
            for object_id, versions in series.edits.items():
                current = _version_as_of(series.by_id[object_id], versions, as_of_ms)
                if current["createdTime"] <= as_of_ms and start_ms <= current[field_name] <= end_ms:
                    found.append(current)
            found.sort(key=lambda obj: (obj[field_name], obj["id"]))
        return found

    def all_objects(self, merchant_id: str, type: str, as_of_ms: int) -> list[Object]:
        return self.objects(merchant_id, type, *_EVERYTHING, as_of_ms)

    def edit(self, merchant_id: str, type: str, object_id: str, now_ms: int) -> Object:
        """Add a version of the object (a refund or an edit) modified at `now_ms`; return it."""
        series = self._load(merchant_id, type)
        if object_id not in series.by_id:
            raise KeyError(f"no {type} object {object_id!r} for merchant {merchant_id!r}")
        versions = series.edits.setdefault(object_id, [])
        latest = versions[-1] if versions else series.by_id[object_id]
        amount_field = "total" if type == "ORDERS" else "amount"
        changed = {
            **latest,
            amount_field: latest[amount_field] - max(1, latest[amount_field] // 4),
            # Two edits in the same millisecond still get distinct, ordered versions.
            "modifiedTime": max(now_ms, latest["modifiedTime"] + 1),
        }
        versions.append(changed)
        return changed

    def _load(self, merchant_id: str, type: str) -> _Series:
        if type not in TYPES:
            raise ValueError(f"unknown type {type!r}")
        series = self._series.get((merchant_id, type))
        if series is None:
            base = generate(
                self._seed,
                merchant_id,
                type,
                self._data_start,
                self._data_end,
                self._objects_per_day,
            )
            base.sort(key=lambda obj: (obj[self._filter_field], obj["id"]))
            series = _Series(
                base=base,
                keys=[obj[self._filter_field] for obj in base],
                by_id={obj["id"]: obj for obj in base},
            )
            self._series[(merchant_id, type)] = series
        return series


def _version_as_of(original: Object, versions: list[Object], as_of_ms: int) -> Object:
    current = original
    for version in versions:
        if version["modifiedTime"] <= as_of_ms:
            current = version
    return current
