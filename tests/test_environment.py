"""The three install descriptions must pin the same versions."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    return dict(m.groups() for m in (re.match(r"\s*-?\s*([A-Za-z0-9_.\-]+)==([^\s]+)", line) for line in lines) if m)


def test_requirements_environment_and_pyproject_agree():
    reqs = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = _pins((ROOT / "environment.yml").read_text().splitlines())
    assert reqs == env
    deps = _pins(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    for name, version in deps.items():
        assert reqs[name] == version, name
    assert reqs["torch"] == "2.13.0"
