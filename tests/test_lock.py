"""The lock files: each requirement of pyproject.toml pinned, with hashes, inside its range."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
RUNTIME_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"


def requirements(*extras: str) -> list[Requirement]:
    """The project's runtime requirements and those of the extras named, with what builds the
    project and pip, which the locks hold too (make install builds without isolation)."""
    project = PYPROJECT["project"]
    texts = [*PYPROJECT["build-system"]["requires"], "pip", *project["dependencies"]]
    for extra in extras:
        texts += project["optional-dependencies"][extra]
    return [Requirement(text) for text in texts]


@dataclass(frozen=True, slots=True)
class Pin:
    """One entry of a lock file: `name==version ; marker` and its `--hash=sha256:` digests."""

    requirement: Requirement
    hashes: tuple[str, ...]

    @property
    def version(self) -> Version | None:
        """The version pinned with `==`, or None when the entry is anything else."""
        specifiers = list(self.requirement.specifier)
        if len(specifiers) != 1 or specifiers[0].operator != "==" or "*" in specifiers[0].version:
            return None
        return Version(specifiers[0].version)


def pins(lock: Path) -> dict[NormalizedName, list[Pin]]:
    """Each entry of a lock file, by name (more than one where markers split a package)."""
    found: dict[NormalizedName, list[Pin]] = {}
    for line in lock.read_text().replace("\\\n", " ").splitlines():
        entry = line.partition("#")[0].strip()
        if not entry:
            continue
        text, *options = entry.split(" --")
        assert text.strip(), f"{lock.name}: an option outside any entry: {entry}"
        hashes = [option.strip().removeprefix("hash=sha256:") for option in options]
        assert all(len(digest) == 64 for digest in hashes), f"{lock.name}: {entry}"
        pin = Pin(Requirement(text), tuple(hashes))
        found.setdefault(canonicalize_name(pin.requirement.name), []).append(pin)
    return found


@pytest.mark.parametrize(
    ("lock", "extras"), [(RUNTIME_LOCK, ()), (DEV_LOCK, ("dev", "load"))], ids=["runtime", "dev"]
)
def test_every_requirement_is_pinned_with_hashes_inside_its_range(
    lock: Path, extras: tuple[str, ...]
) -> None:
    """Each requirement of pyproject.toml (runtime, and in the dev lock the dev and load extras)
    is in the lock at one exact version that its range admits, and every entry of the lock has
    at least one hash."""
    locked = pins(lock)
    for requirement in requirements(*extras):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is not in {lock.name}: run `make lock`"
        for pin in locked[name]:
            assert pin.version is not None, f"{lock.name}: {pin.requirement} is not an exact pin"
            assert pin.version in requirement.specifier, (
                f"{lock.name} pins {pin.requirement}, outside {requirement}: run `make lock`"
            )
    for name, entries in locked.items():
        for pin in entries:
            assert pin.version is not None, f"{lock.name}: {pin.requirement} is not an exact pin"
            assert pin.hashes, f"{lock.name}: {name} has no hash"


def test_the_runtime_lock_is_the_dev_lock_without_the_tools() -> None:
    """The container's versions and hashes are the ones the tests ran with, and none of the dev
    or load extras' packages is among them."""
    runtime, dev = pins(RUNTIME_LOCK), pins(DEV_LOCK)
    for name, entries in runtime.items():
        assert name in dev, f"{name} is in {RUNTIME_LOCK.name}, not in {DEV_LOCK.name}"
        tested = {(pin.version, pin.hashes) for pin in dev[name]}
        for pin in entries:
            assert (pin.version, pin.hashes) in tested, f"{name}: the locks disagree"
    needed = {canonicalize_name(requirement.name) for requirement in requirements()}
    tools = {canonicalize_name(requirement.name) for requirement in requirements("dev", "load")}
    assert not (tools - needed) & runtime.keys()
