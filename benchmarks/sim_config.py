"""The config a benchmark harvests its simulator with: one region on it, always open, each
merchant's token from the environment variable T_<merchant id>."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml


def write_config(
    folder: Path, api_url: str, merchants: Iterable[str], max_exports: int, **top: Any
) -> Path:
    """`folder`/config.yaml, output and state in `folder`; `top` adds top-level keys (with
    `state_url`, the state is there instead)."""
    state = {} if "state_url" in top else {"state_path": "state/harvester.sqlite3"}
    document = {
        "output_dir": "data",
        **state,
        **top,
        "regions": {
            "local": {
                "base_url": api_url,
                "windows": "always",
                "max_concurrent_exports": max_exports,
            }
        },
        "merchants": [{"id": m, "region": "local", "token": f"${{T_{m}}}"} for m in merchants],
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def token_environ(tokens: Mapping[str, str]) -> dict[str, str]:
    """The variables `write_config`'s merchants read their tokens from."""
    return {f"T_{m}": token for m, token in tokens.items()}
