"""A faithful fake of Clover's Export API on loopback, able to inject every fault.

The server (and aiohttp's web with it) loads when one of its names is first used: the CLI
reads `harvester.simulator.command` for its flags without starting one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harvester.simulator.faults import FaultKind, Faults

if TYPE_CHECKING:
    from harvester.simulator.app import Account, Simulator, SimulatorSettings, SimulatorStats

__all__ = [
    "Account",
    "FaultKind",
    "Faults",
    "Simulator",
    "SimulatorSettings",
    "SimulatorStats",
]
_SERVER = frozenset({"Account", "Simulator", "SimulatorSettings", "SimulatorStats"})


def __getattr__(name: str) -> Any:
    if name in _SERVER:
        from harvester.simulator import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
