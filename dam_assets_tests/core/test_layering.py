"""The packages import one way: dam_cli > dam_assets | dam_ingest_api > dam_models > dam_core.

The contract lives in pyproject.toml ([tool.importlinter]); import-linter checks it over the
real source, lazy imports inside functions included.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ["dam_core", "dam_models", "dam_assets", "dam_ingest_api", "dam_cli"]


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _copy_tree(dest: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, dest / pkg, ignore=shutil.ignore_patterns("__pycache__", "data", "static"))
    shutil.copy(REPO / "pyproject.toml", dest / "pyproject.toml")
    return dest


@pytest.mark.system
def test_the_source_keeps_the_import_contract():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.system
def test_an_upward_import_fails_and_is_named(tmp_path):
    root = _copy_tree(tmp_path)
    store = root / "dam_core" / "store.py"
    store.write_text(store.read_text() + "\n\ndef _upward():\n    from dam_ingest_api.catalog import Catalog  # noqa\n")
    result = _lint(root)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout
    assert "dam_core.store -> dam_ingest_api.catalog" in result.stdout, result.stdout


@pytest.mark.system
def test_the_api_importing_the_code_location_fails(tmp_path):
    root = _copy_tree(tmp_path)
    deps = root / "dam_ingest_api" / "deps.py"
    deps.write_text(deps.read_text() + "\nfrom dam_assets.ingest import draining  # noqa\n")
    result = _lint(root)
    assert result.returncode != 0
    assert "dam_ingest_api.deps -> dam_assets.ingest" in result.stdout, result.stdout
