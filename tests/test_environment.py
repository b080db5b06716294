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


def test_make_install_takes_the_pinned_torch_from_the_cpu_index_first():
    makefile = (ROOT / "Makefile").read_text()
    reqs = _pins((ROOT / "requirements.txt").read_text().splitlines())
    assert re.search(r"--index-url \$\(TORCH_CPU_INDEX\) torch==([^\s]+)", makefile)[1] == reqs["torch"]
    assert makefile.index("$(TORCH_CPU_INDEX) torch==") < makefile.index("-r requirements.txt")  # before the rest
