"""The package as a wheel: every module and every preset inside it (CI also installs it in a fresh venv and
runs `mla-export export --preset tiny` from outside the source tree: `make wheel-check`)."""

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_holds_every_module_and_preset(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = tmp_path.glob("mla_export-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "mla_export").rglob("*.py")}
    assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"
    presets = {f"mla_export/presets/{p.name}" for p in (ROOT / "models").glob("*.json")}
    assert presets and presets <= names, f"presets missing from the wheel: {sorted(presets - names)}"
