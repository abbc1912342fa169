"""What `pip install .` (the README's first command, and the image's build) installs:
every module of the source tree, the compiled core, the page's files and the sources
the package data ships, in a fresh virtual environment.

An editable install imports from the source tree, so a package left out of the
wheel (a new subpackage that pyproject.toml does not find) would pass every other
test; this one builds the wheel from a copy of the tree, as a fresh clone would.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "timefast"
# What a fresh clone does not hold: version control, environments, caches and build
# outputs (.gitignore's list; the compiled core is rebuilt from its sources).
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "build", "dist", "*.egg-info", "__pycache__",
    ".*_cache", ".hypothesis", ".benchmarks", "*.so", "*.cpp")
# Package data besides the modules (pyproject.toml's package-data): the Cython
# sources and stub, the C++ header and the marker of a typed package.
SHIPPED_SUFFIXES = (".pyx", ".pxd", ".pyi", ".h", ".typed")


def _compilers() -> list[str]:
    """The C and C++ compilers the build would call (CC/CXX as Python was built with,
    or as the environment overrides them)."""
    return [os.environ.get(var) or sysconfig.get_config_var(var) or "" for var in ("CC", "CXX")]


def _modules() -> list[str]:
    """Every module of the source tree by its dotted name: each .py file and each
    package (a directory with __init__.py), so a new subpackage is covered without
    a line here."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def _data_files() -> list[str]:
    """The package data the source tree holds, relative to timefast/: the page's
    files and the sources pyproject.toml ships beside the modules."""
    return sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts
                  and (p.parent.name == "static" or p.name.endswith(SHIPPED_SUFFIXES)))


IMPORT_ALL = """
import importlib, pathlib, sys
import orjson
import timefast
root = pathlib.Path(timefast.__file__).parent
# The compiled modules, found in what was installed: the build made them.
extensions = sorted(".".join(p.relative_to(root.parent).with_name(p.name.split(".")[0]).parts)
                    for p in root.rglob("*.so"))
names = orjson.loads(sys.argv[1]) + extensions
files = {name: importlib.import_module(name).__file__ for name in names}
print(orjson.dumps({"root": str(root), "files": files, "extensions": extensions}).decode())
"""


def test_the_wheel_installs_every_module_and_the_page_s_files(tmp_path: Path) -> None:
    missing = [c for c in _compilers() if not (c and shutil.which(shlex.split(c)[0]))]
    if missing:
        pytest.skip(f"no C/C++ compiler ({missing}): the compiled core cannot be built")
    # Built from a copy, as from a fresh clone: the source tree gets no build/ or
    # egg-info, and nothing built here (the editable install's core) is reused.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=NOT_SOURCES)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    # With build isolation, as `pip install .` builds: pyproject.toml's
    # build-system.requires (Cython among them) come from pip's cache or the index.
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
         str(src)], env=env, capture_output=True, text=True, timeout=240)
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("timefast-*.whl")

    fresh = tmp_path / "venv"
    venv.create(fresh, with_pip=False)
    python = fresh / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
         "--no-index", "-q", str(wheel)], env=env, capture_output=True, text=True,
        timeout=120)
    assert installed.returncode == 0, installed.stdout + installed.stderr
    # The dependencies (orjson, PyNaCl, websockets...) from this environment, after
    # the fresh one's own site-packages: a .pth line only appends its directory, so
    # timefast is the wheel's, whatever this environment holds.
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                           "['purelib'])"], capture_output=True, text=True, check=True)
    deps = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    Path(site.stdout.strip(), "deps-of-the-test.pth").write_text("\n".join(deps) + "\n")

    # -I: no PYTHONPATH, no user site, not the working directory (the source tree).
    ran = subprocess.run([str(python), "-I", "-c", IMPORT_ALL, orjson.dumps(_modules()).decode()],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    got = orjson.loads(ran.stdout)
    root = Path(got["root"])
    assert root.is_relative_to(fresh), f"timefast came from {root}, not the fresh venv"
    assert all(Path(f).is_relative_to(root) for f in got["files"].values()), got["files"]
    assert got["extensions"] == ["timefast._core"]

    # The page's files and the package data, as in the source tree.
    shipped = sorted(str(p.relative_to(root)) for p in root.rglob("*")
                     if p.is_file() and "__pycache__" not in p.parts
                     and (p.parent.name == "static" or p.name.endswith(SHIPPED_SUFFIXES)))
    assert shipped == _data_files()
    # The page's /client.js is the JavaScript client itself (a link in the source
    # tree, a file in the wheel).
    client = root / "static" / "client.js"
    assert not client.is_symlink()
    assert client.read_bytes() == (ROOT / "clients" / "js" / "timefast-client.js").read_bytes()
    assert (PACKAGE / "static" / "client.js").resolve() == \
        (ROOT / "clients" / "js" / "timefast-client.js").resolve()
