"""A faithful fake of Clover's Export API on loopback, able to inject every fault."""

from __future__ import annotations

from harvester.simulator.app import Account, Simulator, SimulatorSettings, SimulatorStats
from harvester.simulator.faults import FaultKind, Faults

__all__ = [
    "Account",
    "FaultKind",
    "Faults",
    "Simulator",
    "SimulatorSettings",
    "SimulatorStats",
]
