"""deploy/: each example is valid for its tool and runs only words the harvester knows."""

from __future__ import annotations

import fnmatch
import posixpath
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from harvester.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = sorted((DEPLOY / "systemd").iterdir())
INSTALLED = "/usr/local/bin/harvester"


def directives(unit: Path) -> dict[str, list[str]]:
    """Every `Key=value` of a unit file, by key, in order."""
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def assert_harvester_words(args: list[str]) -> None:
    """The arguments parse with the harvester's own command line."""
    build_parser().parse_args(args)


def test_systemd_units_verify(tmp_path: Path) -> None:
    """systemd-analyze verify finds nothing to say about the units (the harvester's path
    replaced by a stand-in that exists here)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    stand_in = tmp_path / "bin" / "harvester"
    stand_in.parent.mkdir()
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    copies = []
    for unit in UNITS:
        copy = tmp_path / unit.name
        copy.write_text(unit.read_text().replace(INSTALLED, str(stand_in)))
        copies.append(str(copy))
    result = subprocess.run(
        [analyze, "verify", *copies], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def test_systemd_units_run_real_commands_and_never_overlap() -> None:
    """The timer is persistent and starts the run unit; run and serve conflict; ExecStart
    lines are harvester commands that parse."""
    by_name = {unit.name: directives(unit) for unit in UNITS}
    assert set(by_name) == {
        "harvester-run.service",
        "harvester-run.timer",
        "harvester-serve.service",
    }
    timer = by_name["harvester-run.timer"]
    assert timer["Persistent"] == ["true"]
    assert timer["Unit"] == ["harvester-run.service"]
    assert "harvester-serve.service" in by_name["harvester-run.service"]["Conflicts"][0]
    assert "harvester-run.service" in by_name["harvester-serve.service"]["Conflicts"][0]
    for name, word in (("harvester-run.service", "run"), ("harvester-serve.service", "serve")):
        program, *args = shlex.split(by_name[name]["ExecStart"][0])
        assert program == INSTALLED
        assert args[0] == word
        assert_harvester_words(args)
        assert by_name[name]["SuccessExitStatus"] == ["130 143"]


def manifests() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        (document,) = yaml.safe_load_all(path.read_text())
        found[document["kind"]] = document
    return found


def containers(document: dict[str, Any]) -> list[dict[str, Any]]:
    spec = document["spec"]
    pod = spec["jobTemplate"]["spec"]["template"] if "jobTemplate" in spec else spec["template"]
    result: list[dict[str, Any]] = pod["spec"]["containers"]
    return result


def test_kubernetes_manifests_parse_and_forbid_overlap() -> None:
    """The CronJob forbids concurrent jobs, the Deployment is one pod replaced by Recreate, and
    each container runs a harvester command that parses."""
    found = manifests()
    assert set(found) == {"CronJob", "Deployment"}
    cron, deployment = found["CronJob"], found["Deployment"]
    assert cron["apiVersion"] == "batch/v1"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    assert cron["spec"]["schedule"] == "30 0 * * *"
    assert deployment["apiVersion"] == "apps/v1"
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    for document, word in ((cron, "run"), (deployment, "serve")):
        (container,) = containers(document)
        assert container["args"][0] == word
        assert_harvester_words(container["args"])
        mounted = {m["mountPath"] for m in container["volumeMounts"]}
        assert "/etc/harvester" in mounted


def container_paths(text: str) -> tuple[dict[str, Path], list[tuple[str, list[str]]]]:
    """What the container file's COPYs put where (container path -> repository path), and
    each `pip install` its RUNs do: the working directory and the words after `pip install`."""
    workdir = "/"
    copied: dict[str, Path] = {}
    installs: list[tuple[str, list[str]]] = []
    for word, rest in re.findall(r"^(COPY|RUN|WORKDIR)\s+((?:.*\\\n)*.*)$", text, re.M):
        rest = rest.replace("\\\n", " ")
        if word == "WORKDIR":
            workdir = posixpath.join(workdir, rest.strip())
        elif word == "COPY":
            *sources, destination = rest.split()
            target = posixpath.normpath(posixpath.join(workdir, destination))
            for source in sources:
                into = len(sources) > 1 or destination.endswith("/")
                where = posixpath.join(target, Path(source).name) if into else target
                copied[where] = ROOT / source
        else:
            for command in rest.split("&&"):
                words = shlex.split(command)
                if words[:2] == ["pip", "install"]:
                    installs.append((workdir, words[2:]))
    return copied, installs


def test_container_file_copies_real_paths_and_installs_what_it_copied() -> None:
    """Every COPY source exists from the repository's root; pip installs the runtime lock
    checked against its hashes, then the folder the project was copied to and nothing beside
    it; the entry point is the project's script."""
    text = (DEPLOY / "Containerfile").read_text()
    copied, installs = container_paths(text)
    for where, source in copied.items():
        assert source.exists(), f"COPY to {where}: {source} is not in the repository"
    (lock_workdir, lock_install), (package_workdir, package_install) = installs
    assert {"--require-hashes", "--no-deps"} <= set(lock_install)
    lock = lock_install[lock_install.index("-r") + 1]
    assert copied[posixpath.join(lock_workdir, lock)] == ROOT / "requirements.lock"
    assert {"--no-deps", "--no-build-isolation"} <= set(package_install)
    (folder,) = [word for word in package_install if not word.startswith("-")]
    folder = posixpath.join(package_workdir, folder)
    for needed in ("pyproject.toml", "README.md", "harvester"):  # what building the folder reads
        assert copied[posixpath.join(folder, needed)] == ROOT / needed
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert re.search(r'^ENTRYPOINT \["harvester"\]$', text, re.M)
    assert "harvester" in scripts


def test_the_build_context_leaves_out_a_checkouts_leftovers_but_nothing_copied() -> None:
    """`.dockerignore` (read by docker, and by podman and buildah when there is no
    `.containerignore`) keeps the venv, git and bytecode (which the test suite writes into
    `harvester/`) out of the build context, and no COPY source of the Containerfile with it."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(path: str) -> bool:
        parts = path.split("/")
        return any(
            fnmatch.fnmatch(path, pattern)
            or (pattern.startswith("**/") and pattern[3:] in parts)
            or any(fnmatch.fnmatch("/".join(parts[: n + 1]), pattern) for n in range(len(parts)))
            for pattern in patterns
        )

    for leftover in (".venv/bin/python", ".git/HEAD", "harvester/__pycache__/cli.cpython-311.pyc"):
        assert ignored(leftover), leftover
    copied, _ = container_paths((DEPLOY / "Containerfile").read_text())
    for source in copied.values():
        name = source.relative_to(ROOT).as_posix()
        assert not ignored(name), name
        if source.is_dir():
            for inside in source.rglob("*.py"):
                assert not ignored(inside.relative_to(ROOT).as_posix()), inside
