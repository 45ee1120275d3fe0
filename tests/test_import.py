"""Importing sfu without the built extension fails loudly, saying how to build it."""

import shutil
import subprocess
import sys
from pathlib import Path

SFU = Path(__file__).resolve().parent.parent / "sfu"


def test_import_without_native_extension_explains_how_to_build(tmp_path: Path) -> None:
    shutil.copytree(SFU, tmp_path / "sfu", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    # -S: no site-packages, so an editable install cannot redirect "sfu" to the real tree.
    proc = subprocess.run([sys.executable, "-S", "-c", "import sfu"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "sfu._native (the Cython engine) is not built" in proc.stderr
    assert "make build" in proc.stderr

