#!/usr/bin/env python3
"""Build llama.cpp's `llama-server` and the demo model as GGUF, for korepl's remote-backend tests.

No network but PyPI: llama.cpp's source comes from the `llama-cpp-python` sdist, which vendors it
(`vendor/llama.cpp`, with `convert_hf_to_gguf.py`, `gguf-py` and `tools/server`).

    python scripts/llama_server.py            # build what is missing, print the two paths
    python scripts/llama_server.py --json     # the same, as one JSON object on stdout
    python scripts/llama_server.py --check    # print the paths if cached, exit 1 if not (builds nothing)

Cache: ${KOREPL_CI_CACHE:-~/.cache/korepl-ci}/llama-<llama-cpp-python version>/
    bin/llama-server              keyed by the version (the folder) and the build flags (flags.txt)
    demo-<model hash>.gguf        keyed by a sha256 over the demo model folder's file names and bytes
    convert-venv/                 the converter's Python: this interpreter's packages (torch,
                                  transformers, numpy) seen through a .pth file, plus the vendored gguf-py
                                  (and its tqdm, pyyaml, requests) installed from it
    src/.../vendor/llama.cpp/     only the converter once the server is built (~3 MB of ~220)
A second run finds both files and does nothing but print their paths.  Run it with the project's
Python (the one with torch and transformers).  --jobs sets the compile jobs (default: all CPUs).

Two snags of the vendored converter, worked around without editing it:
- the demo tokenizer's pre-tokenizer hash is unknown to it: it is treated as `gpt-2` (harmless,
  korepl sends token ids, never text, to the server);
- transformers-5 GPT-2 configs carry no `n_ctx`: the model is converted from a temporary copy whose
  config.json has `n_ctx` = `n_positions`.

Exit status: 0 done; 3 cannot build here (a tool is missing; the message names it); 1 anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # vendors llama.cpp 0.5.0-dev (its CMakeLists' version)

REPO = Path(__file__).resolve().parent.parent
DEMO_MODEL_DIR = REPO / "korepl" / "demo_model"

# CPU only, portable (no -march=native: a cache may move between CPUs), one static binary,
# nothing fetched at build time (no curl, no OpenSSL, no prebuilt web UI), only the server.
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=OFF",
    "-DGGML_OPENMP=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
)

EXIT_CANNOT_BUILD = 3


class CannotBuild(Exception):
    """A tool the build needs is missing on this machine."""


def log(message: str) -> None:
    print(f"[llama_server] {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    root = os.environ.get("KOREPL_CI_CACHE") or str(Path.home() / ".cache" / "korepl-ci")
    return Path(root).expanduser() / f"llama-{LLAMA_CPP_PYTHON_VERSION}"


def model_hash(folder: Path = DEMO_MODEL_DIR) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


def paths() -> dict[str, Path]:
    cache = cache_dir()
    return {
        "cache": cache,
        "server": cache / "bin" / "llama-server",
        "gguf": cache / f"demo-{model_hash()}.gguf",
        "flags": cache / "bin" / "flags.txt",
    }


def flags_text() -> str:
    return "\n".join(CMAKE_FLAGS) + "\n"


def server_is_built(p: dict[str, Path]) -> bool:
    return (p["server"].is_file() and os.access(p["server"], os.X_OK) and p["flags"].is_file()
            and p["flags"].read_text() == flags_text())


@contextlib.contextmanager
def locked(cache: Path):
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run(command: list[str], **kwargs) -> None:
    log("$ " + " ".join(str(c) for c in command))
    # the tools' output goes to stderr: stdout carries only the paths (or the JSON)
    subprocess.run([str(c) for c in command], check=True, stdout=sys.stderr, **kwargs)


# What conversion needs of the vendored tree; the rest goes once llama-server is built.
CONVERTER_FILES = ("convert_hf_to_gguf.py", "conversion", "gguf-py", "models/templates", "LICENSE")


def source_tree(cache: Path, to_build: bool) -> Path:
    """The vendored llama.cpp of the pinned sdist, downloaded and unpacked when missing."""
    llama = cache / "src" / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"
    if (llama / "convert_hf_to_gguf.py").is_file() and (not to_build or (llama / "CMakeLists.txt").is_file()):
        return llama
    download = cache / "download"
    download.mkdir(parents=True, exist_ok=True)
    sdist = download / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    if not sdist.is_file():
        started = time.monotonic()
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}", "-d", download])
        log(f"downloaded the sdist in {time.monotonic() - started:.1f} s")
    unpack = Path(tempfile.mkdtemp(prefix="src-", dir=cache))
    with tarfile.open(sdist) as archive:
        archive.extractall(unpack, filter="data")
    shutil.rmtree(cache / "src", ignore_errors=True)
    unpack.rename(cache / "src")
    shutil.rmtree(download, ignore_errors=True)
    if not (llama / "CMakeLists.txt").is_file():
        raise RuntimeError(f"the sdist has no vendor/llama.cpp: {sdist}")
    return llama


def prune(cache: Path) -> None:
    """Keep only the converter of the source tree (a few MB instead of ~220), for a small CI cache."""
    shutil.rmtree(cache / "download", ignore_errors=True)  # the sdist: unpacked already
    src = cache / "src"
    llama = src / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"
    if not (llama / "CMakeLists.txt").is_file():  # pruned already (or never unpacked)
        return
    keep = src.parent / "converter-src"
    shutil.rmtree(keep, ignore_errors=True)
    target = keep / llama.relative_to(src)
    target.mkdir(parents=True)
    for name in CONVERTER_FILES:
        if (llama / name).exists():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (llama / name).rename(target / name)
    shutil.rmtree(src)
    keep.rename(src)


def build_server(p: dict[str, Path], jobs: int) -> float:
    for tool in ("cmake", "c++", "cc"):
        if shutil.which(tool) is None:
            raise CannotBuild(f"`{tool}` is not on PATH (install cmake and a C/C++ compiler, e.g. "
                              "apt-get install cmake g++)")
    llama = source_tree(p["cache"], to_build=True)
    build = p["cache"] / "build"
    shutil.rmtree(build, ignore_errors=True)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    started = time.monotonic()
    run(["cmake", "-S", llama, "-B", build, *generator, *CMAKE_FLAGS])
    run(["cmake", "--build", build, "--target", "llama-server", "--parallel", str(jobs)])
    seconds = time.monotonic() - started
    built = build / "bin" / "llama-server"
    p["server"].parent.mkdir(parents=True, exist_ok=True)
    staged = p["server"].with_suffix(".tmp")
    shutil.copy2(built, staged)
    staged.rename(p["server"])
    p["flags"].write_text(flags_text())
    shutil.rmtree(build, ignore_errors=True)
    log(f"built llama-server in {seconds:.1f} s ({jobs} jobs)")
    return seconds


# The converter, run inside the converter venv: patches the pre-tokenizer check at runtime, then
# runs the vendored convert_hf_to_gguf.py unchanged.
CONVERT_WRAPPER = r'''
import runpy, sys
llama = sys.argv.pop(1)
sys.path.insert(0, llama)
sys.path.insert(1, llama + "/gguf-py")
from conversion import base

original = base.TextModel.get_vocab_base_pre

def get_vocab_base_pre(self, tokenizer):
    try:
        return original(self, tokenizer)
    except NotImplementedError:
        base.logger.warning("korepl: unknown pre-tokenizer hash, written as 'gpt-2' (korepl sends token ids)")
        return "gpt-2"

base.TextModel.get_vocab_base_pre = get_vocab_base_pre
sys.argv[0] = llama + "/convert_hf_to_gguf.py"
runpy.run_path(sys.argv[0], run_name="__main__")
'''


def site_packages(python: str) -> str:
    return subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()


def converter_python(cache: Path, llama: Path) -> str:
    """A venv that sees this interpreter's torch/transformers/numpy and has the vendored gguf-py."""
    venv = cache / "convert-venv"
    python = venv / "bin" / "python"
    base = site_packages(sys.executable)
    ready = venv / ".ready"  # holds the packages folder it borrows: a cache moved to another checkout rebuilds
    if python.is_file() and ready.is_file() and ready.read_text() == base:
        return str(python)
    shutil.rmtree(venv, ignore_errors=True)
    run([sys.executable, "-m", "venv", venv])
    Path(site_packages(str(python)), "_korepl_base.pth").write_text(base + "\n")
    run([python, "-m", "pip", "install", "--quiet", llama / "gguf-py"])
    ready.write_text(base)
    return str(python)


def convert_model(p: dict[str, Path]) -> float:
    llama = source_tree(p["cache"], to_build=False)
    python = converter_python(p["cache"], llama)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="demo-model-", dir=p["cache"]) as temp:
        model = Path(temp) / "model"
        shutil.copytree(DEMO_MODEL_DIR, model)
        config = json.loads((model / "config.json").read_text())
        config.setdefault("n_ctx", config["n_positions"])
        (model / "config.json").write_text(json.dumps(config, indent=2))
        wrapper = Path(temp) / "convert.py"
        wrapper.write_text(CONVERT_WRAPPER)
        staged = Path(temp) / "demo.gguf"
        run([python, wrapper, llama, model, "--outtype", "f32", "--outfile", staged],
            env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
        shutil.move(str(staged), p["gguf"].with_suffix(".tmp"))
        p["gguf"].with_suffix(".tmp").rename(p["gguf"])
    seconds = time.monotonic() - started
    log(f"converted the demo model to GGUF f32 in {seconds:.1f} s")
    return seconds


def ensure(jobs: int) -> dict[str, Path]:
    p = paths()
    with locked(p["cache"]):
        if not server_is_built(p):
            build_server(p, jobs)
        if not p["gguf"].is_file():
            for stale in p["cache"].glob("demo-*.gguf"):
                stale.unlink()
            convert_model(p)
        prune(p["cache"])
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the paths as one JSON object")
    parser.add_argument("--check", action="store_true", help="build nothing; exit 1 if not cached")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="parallel compile jobs")
    args = parser.parse_args(argv)
    p = paths()
    if args.check:
        if not (server_is_built(p) and p["gguf"].is_file()):
            log(f"not cached under {p['cache']}")
            return 1
    else:
        try:
            p = ensure(max(1, args.jobs))
        except CannotBuild as error:
            log(f"cannot build llama-server here: {error}")
            return EXIT_CANNOT_BUILD
        except subprocess.CalledProcessError as error:
            log(f"failed: {error}")
            return 1
    result = {"version": LLAMA_CPP_PYTHON_VERSION, "server": str(p["server"]), "gguf": str(p["gguf"])}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"LLAMA_SERVER={result['server']}")
        print(f"KOREPL_DEMO_GGUF={result['gguf']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
