"""Build llama.cpp's own `llama-server` from the sources vendored in the installed
llama-cpp-python's sdist, so the comparison runs the same llama.cpp revision localllm does.

The sdist comes from PyPI through pip (`pip download --no-binary :all: --no-deps
llama-cpp-python==<installed version>`); the source and the build live in the user cache
folder (`<cache>/llama-server/<version>/`), never in the repository, and a finished build
is reused. Build flags are llama.cpp's defaults (native CPU, OpenMP), as the wheel's.

    python benchmarks/llama_server_build.py      # prints the llama-server path
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
from pathlib import Path


def cache_root() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("localllm", appauthor=False)) / "llama-server"


def ensure_llama_server(log=print) -> Path:
    """The path of a built llama-server for the installed llama-cpp-python version."""
    version = importlib.metadata.version("llama_cpp_python")
    root = cache_root()
    work = root / version
    binary = work / "build" / "bin" / "llama-server"
    if binary.is_file():
        return binary
    root.mkdir(parents=True, exist_ok=True)
    sdist = root / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        log(f"downloading the llama-cpp-python {version} sdist from PyPI ...")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-binary", ":all:", "--no-deps",
                        f"llama-cpp-python=={version}", "-d", str(root)], check=True)
    source = work / "src"
    if not (source / "CMakeLists.txt").is_file():
        log(f"unpacking {sdist.name} ...")
        with tarfile.open(sdist) as tar:
            top = tar.getmembers()[0].name.split("/")[0]
            prefix = f"{top}/vendor/llama.cpp/"
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for m in members:
                m.name = m.name[len(prefix):]
            members = [m for m in members if m.name]
            tar.extractall(source, members=members, filter="data")
    build = work / "build"
    jobs = str(os.cpu_count() or 2)
    log(f"building llama-server in {build} (several minutes on 2 cores) ...")
    subprocess.run(["cmake", "-S", str(source), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release",
                    "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                    "-DLLAMA_BUILD_SERVER=ON", "-DBUILD_SHARED_LIBS=OFF"], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["nice", "cmake", "--build", str(build), "--target", "llama-server", "-j", jobs], check=True,
                   stdout=subprocess.DEVNULL)
    if not binary.is_file():
        raise SystemExit(f"the build finished without {binary}")
    return binary


if __name__ == "__main__":
    print(ensure_llama_server(log=lambda m: print(m, file=sys.stderr)))
