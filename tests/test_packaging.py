"""The wheel built from setup.py ships both packages and the run configurations.

Beam workers install this distribution (``--setup_file``), so a module missing from the wheel
only shows up as an ImportError on a remote worker. The build runs on a copy of the sources in
a temporary folder, so it never writes ``build/`` or ``*.egg-info`` into the repository.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "MANIFEST.in", "nnmf_tf", "pipeline", "configs")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the repository."""
    if importlib.util.find_spec("wheel") is None or importlib.util.find_spec("setuptools") is None:
        pytest.skip("building a wheel needs the 'wheel' and 'setuptools' packages, which are not installed")
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        elif path.exists():
            shutil.copy2(path, source / name)
    dist = tmp_path_factory.mktemp("dist")
    command = [
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        "-w", str(dist), str(source),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"pip wheel failed:\n{done.stdout}\n{done.stderr}"
    wheels = sorted(dist.glob("nnmf_pipeline-*.whl"))
    assert len(wheels) == 1, f"expected one nnmf_pipeline wheel; got {[w.name for w in dist.iterdir()]}"
    return wheels[0]


@pytest.fixture(scope="module")
def wheel_names(wheel) -> list[str]:
    """Names of the files inside the wheel."""
    with zipfile.ZipFile(wheel) as archive:
        return archive.namelist()


def _modules(directory: str) -> set[str]:
    return {p.relative_to(REPO).as_posix() for p in (REPO / directory).rglob("*.py") if "__pycache__" not in p.parts}


@pytest.mark.parametrize("package", ["nnmf_tf", "pipeline"])
def test_wheel_ships_every_module_of_both_packages(wheel_names, package):
    assert f"{package}/__init__.py" in wheel_names
    missing = _modules(package) - set(wheel_names)
    assert not missing, f"modules missing from the wheel: {sorted(missing)}"


def test_wheel_ships_the_key_modules(wheel_names):
    for name in ("nnmf_tf/halfstep.py", "nnmf_tf/solver.py", "pipeline/main.py", "pipeline/cli.py"):
        assert name in wheel_names


def test_wheel_ships_the_native_kernel_source(wheel_names):
    """Workers build the native kernel from this source on first use (nnmf_tf/native.py)."""
    assert "nnmf_tf/kernels/solve_rows.cc" in wheel_names


def test_wheel_declares_the_console_script(wheel, wheel_names):
    [entry_points] = [name for name in wheel_names if name.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(entry_points).decode("utf-8")
    assert "[console_scripts]" in text
    assert any(line.replace(" ", "") == "nnmf-pipeline=pipeline.cli:main" for line in text.splitlines())
    assert not any(name.startswith(("tests/", "benchmarks/")) for name in wheel_names)
