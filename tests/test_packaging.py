"""The wheel: every package goes in, and a non-editable install finds the shipped scenarios
by name (they travel as `fedtune/scenarios/`)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

from conftest import ROOT

from fedtune.config import SCENARIO_DIR


def test_the_package_list_names_every_package() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in ROOT.glob("fedtune/**/__init__.py")
    }
    assert set(declared["packages"]) == found | {"fedtune.scenarios"}


def test_a_wheel_install_finds_the_shipped_scenarios_by_name(tmp_path) -> None:
    source = tmp_path / "source"  # a copy: setuptools builds in the tree it is given
    for part in ("fedtune", "scenarios"):
        shutil.copytree(ROOT / part, source / part, ignore=shutil.ignore_patterns("__pycache__"))
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, source / part)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    wheel = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(source)]
    subprocess.run(wheel, check=True, capture_output=True)
    (built,) = tmp_path.glob("fedtune-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(built)], check=True)
    probe = (
        "from fedtune.config import SCENARIO_DIR, load_scenario\n"
        "print(SCENARIO_DIR); print(load_scenario('quickstart').name)\n"
    )
    # -S: no .pth files, so the editable install of this checkout is not on the path
    deps = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), deps])}
    run = [sys.executable, "-S", "-c", probe]
    out = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    scenario_dir, name = out.stdout.split()
    assert Path(scenario_dir) == site / "fedtune" / "scenarios"
    assert name == "quickstart"
    shipped = {p.name for p in SCENARIO_DIR.glob("*.yaml")}
    assert {p.name for p in Path(scenario_dir).glob("*.yaml")} == shipped
