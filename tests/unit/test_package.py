"""Package rules: one HTTP module, one S3 module, nothing heavy or noisy at import time."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import qcompute

PACKAGE = Path(qcompute.__file__).parent
SDK_MODULES = sorted(path.stem for path in PACKAGE.glob("*.py")  # every SDK module, new ones too
                     if path.stem not in ("__main__", "_version"))
OWNERS = {"requests": "_http", "urllib3": "_http", "boto3": "_storage", "botocore": "_storage"}


def _imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("module", SDK_MODULES)
def test_one_choke_point_per_protocol(module: str) -> None:
    for library, owner in OWNERS.items():
        if library in _imports(module):
            assert module == owner, f"{module} imports {library}; only {owner} may"


@pytest.mark.parametrize("module", SDK_MODULES)
def test_modules_declare_all_and_never_print(module: str) -> None:
    source = (PACKAGE / f"{module}.py").read_text()
    tree = ast.parse(source)
    assert any(isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__"
                                                    for t in node.targets) for node in tree.body)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    assert not [c for c in calls if getattr(c.func, "id", "") == "print"]
    assert len(source.splitlines()) < 600


def test_import_loads_no_s3_library_and_does_no_io() -> None:
    code = ("import sys, socket\n"
            "socket.socket.connect = lambda *a: (_ for _ in ()).throw(AssertionError('I/O'))\n"
            "import qcompute\n"
            "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules\n"
            "print(sorted(qcompute.__all__)[:1])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=PACKAGE.parent, timeout=60)
    assert result.returncode == 0, result.stderr
