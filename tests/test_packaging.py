"""Packaging: the version in one place, pyproject's metadata coherent, and int8 on a torch without torch.ao."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

import korepl
from korepl import precision

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]

# Runs korepl's command line on a torch whose dynamic quantization API is gone, as torch says it will be:
# torch imports torch.ao.quantization itself, so the modules are dropped after `import torch` and every later
# import of them fails, before korepl is imported.
WITHOUT_TORCH_AO = """
import importlib.abc, sys
import torch
GONE = ("torch.ao.quantization", "torch.ao.nn.quantized")
def gone(name):
    return name in GONE or name.startswith(tuple(g + "." for g in GONE))
class Gone(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if gone(name):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
for name in [m for m in sys.modules if gone(m)]:
    del sys.modules[name]
for parent, child in (("torch.ao", "quantization"), ("torch.ao.nn", "quantized")):
    if hasattr(sys.modules[parent], child):
        delattr(sys.modules[parent], child)
sys.meta_path.insert(0, Gone())
from korepl.cli import main
sys.exit(main())
"""


def source_version() -> str:
    """__version__ as written in korepl/__init__.py (read as text: the file hatch reads)."""
    text = (ROOT / "korepl" / "__init__.py").read_text(encoding="utf-8")
    return re.search(r'^__version__ = "([^"]+)"$', text, re.M).group(1)


def korepl_env(tmp_path: Path) -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", XDG_STATE_HOME=str(tmp_path / "state"),
                XDG_CONFIG_HOME=str(tmp_path / "config"))


def test_version_flag_prints_the_version_in_init():
    result = subprocess.run([sys.executable, "-m", "korepl", "--version"], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0
    assert result.stdout.strip() == f"korepl {source_version()}" == f"korepl {korepl.__version__}"
    Version(source_version())  # a version pip accepts


def test_the_version_is_written_in_one_place():
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    assert PYPROJECT["tool"]["hatch"]["version"]["path"] == "korepl/__init__.py"


def test_license_metadata_is_pep_639_and_its_files_exist():
    assert PROJECT["license"] == "MIT"
    assert not any(c.startswith("License ::") for c in PROJECT["classifiers"])  # the expression says it
    files = PROJECT["license-files"]
    assert "LICENSE" in files
    for name in files:
        assert (ROOT / name).is_file(), name
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License") and "Copyright (c) 2026 the korepl authors" in licence
    # The demo model's training text is under other terms; the file that states them travels as a licence file.
    assert "korepl/demo_model/README.md" in files
    demo = (ROOT / "korepl" / "demo_model" / "README.md").read_text(encoding="utf-8")
    assert "MPL-2.0" in demo and "Copyright Act art. 7" in demo
    # PEP 639's `license` string and `license-files` list need hatchling 1.27 or newer.
    hatchling = next(Requirement(r) for r in PYPROJECT["build-system"]["requires"] if r.startswith("hatchling"))
    assert not hatchling.specifier.contains("1.26") and hatchling.specifier.contains("1.27")


def test_project_metadata_for_a_release():
    assert set(PROJECT["urls"]) >= {"Homepage", "Repository", "Issues"}
    assert PROJECT["keywords"] and "Natural Language :: Korean" in PROJECT["classifiers"]
    torch_req = next(Requirement(r) for r in PROJECT["dependencies"] if Requirement(r).name == "torch")
    # An upper bound (the lean step uses torch internals), and one that admits the torch the tests run on.
    assert any(spec.operator == "<" for spec in torch_req.specifier)
    assert torch_req.specifier.contains(Version(torch.__version__).base_version)


def test_int8_is_available_on_this_torch():
    assert precision.int8_unavailable() is None


def test_int8_refused_in_one_line_where_torch_cannot_quantize(monkeypatch):
    monkeypatch.setattr(precision, "int8_unavailable", lambda: "--quantize int8 is unavailable on this torch")
    with pytest.raises(ValueError, match="unavailable on this torch"):
        precision.resolve("float32", "int8", "cpu", 64, 512, None)


def test_without_torch_ao_int8_is_one_line_and_exit_2(tmp_path):
    result = subprocess.run([sys.executable, "-c", WITHOUT_TORCH_AO, "--demo", "--prompt", "안녕",
                             "--max-new-tokens", "5", "--quantize", "int8"], capture_output=True, text=True,
                            env=korepl_env(tmp_path), timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"korepl: --quantize int8 is unavailable on this torch ({torch.__version__})")
    assert "--dtype" in lines[0]


def test_without_torch_ao_auto_measures_the_other_paths(tmp_path):
    result = subprocess.run([sys.executable, "-c", WITHOUT_TORCH_AO, "--demo", "--prompt", "안녕",
                             "--max-new-tokens", "5", "--dtype", "auto"], capture_output=True, text=True,
                            env=korepl_env(tmp_path), timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert [line for line in result.stderr.splitlines() if not line.startswith("korepl: stopped at")] == []
    verdicts = json.loads((tmp_path / "state" / "korepl" / "precision.json").read_text(encoding="utf-8"))
    (verdict,) = [v for k, v in verdicts.items() if k.startswith("auto |")]  # beside it: layout, attention verdicts
    assert verdict["path"] != "int8" and "int8" not in verdict["ms"]
