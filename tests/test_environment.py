"""The install descriptions agree: requirements.txt and environment.yml pin the same versions, inside the ranges
pyproject.toml declares, whose two ends were tested (benchmarks/version_ranges.py)."""

import json
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    return dict(m.groups() for m in (re.match(r"\s*-?\s*([A-Za-z0-9_.\-]+)==([^\s]+)", line) for line in lines) if m)


def test_requirements_environment_and_pyproject_agree():
    reqs = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = _pins((ROOT / "environment.yml").read_text().splitlines())
    assert reqs == env
    deps = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    for dep in deps:
        assert dep.name in reqs, f"{dep.name} is a dependency but requirements.txt does not pin it"
        assert dep.specifier.contains(reqs[dep.name]), f"{dep.name}=={reqs[dep.name]} lies outside {dep.specifier}"
    assert reqs["torch"] == "2.13.0"


def test_the_ranges_were_tested_at_both_ends():
    """Every lower bound in pyproject.toml is the version the floor run installed and passed with, and the newest
    run passed too: a range changes only with a new run of benchmarks/version_ranges.py."""
    record = json.loads((ROOT / "reports" / "ci" / "version_ranges.json").read_text())
    deps = [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]
    assert {d.name: d.specifier for d in deps} == {k: SpecifierSet(v) for k, v in record["ranges"].items()}
    assert record["floor"]["passed"] and record["newest"]["passed"]
    for dep in deps:
        lower = [Version(s.version) for s in dep.specifier if s.operator == ">="]
        if lower:
            assert Version(record["floor"]["versions"][dep.name]) == lower[0], dep.name
        assert dep.specifier.contains(record["newest"]["versions"][dep.name]), dep.name


def test_make_install_takes_the_pinned_torch_from_the_cpu_index_first():
    makefile = (ROOT / "Makefile").read_text()
    reqs = _pins((ROOT / "requirements.txt").read_text().splitlines())
    assert re.search(r"--index-url \$\(TORCH_CPU_INDEX\) torch==([^\s]+)", makefile)[1] == reqs["torch"]
    assert makefile.index("$(TORCH_CPU_INDEX) torch==") < makefile.index("-r requirements.txt")  # before the rest
