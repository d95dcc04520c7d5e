"""Make (once) the virtual environment with Triton's clients: .venv-triton/ in the repository root.

    python scripts/triton_env.py                   # tritonclient[grpc] (requirements-triton.txt)
    python scripts/triton_env.py --perf-analyzer   # and Triton's perf_analyzer at .venv-triton/bin/

Prints the environment's python. tritonclient needs protobuf < 7, so it cannot share the project's
environment (protobuf 7). perf_analyzer ships in the ``perf-analyzer`` wheel (2.60.0) built for glibc 2.38
(manylinux_2_38); on an older system (Debian 12 has 2.36) the wheel's binary runs under Debian 13's C and C++
runtime libraries, fetched with ``apt-get download`` into .venv-triton/runtime/ and used through their own
dynamic loader by the wrapper script .venv-triton/bin/perf_analyzer.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import platform
import subprocess
import sys
import tempfile
import venv
import zipfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-triton"
REQUIREMENTS = ROOT / "requirements-triton.txt"
PERF_ANALYZER = "perf-analyzer==2.60.0"
#: The C library perf_analyzer's wheel is built against.
WHEEL_GLIBC = (2, 38)
#: Debian 13 packages that hold a glibc >= 2.38 and the libstdc++ the binary needs.
RUNTIME_PACKAGES = ("libc6", "libstdc++6", "libgcc-s1")
RUNTIME_SUITE = "trixie"


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    ROOT.joinpath(".venv-triton.lock").touch()
    with ROOT.joinpath(".venv-triton.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(*command: str | Path, **kwargs) -> None:
    subprocess.run([str(c) for c in command], check=True, **kwargs)


def python() -> Path:
    return VENV / "bin" / "python"


def ensure_clients() -> Path:
    """The environment's python, with requirements-triton.txt installed (again when it changed)."""
    stamp = VENV / ".installed"
    digest = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    with _locked():
        if stamp.is_file() and stamp.read_text() == digest and python().is_file():
            return python()
        if not python().is_file():
            venv.create(VENV, with_pip=True)
        _run(python(), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", REQUIREMENTS)
        stamp.write_text(digest)
    return python()


def _glibc() -> tuple[int, ...]:
    name, text = platform.libc_ver()
    return tuple(int(part) for part in text.split(".")[:2]) if name == "glibc" and text else (0, 0)


def ensure_perf_analyzer() -> Path:
    """Path of a runnable ``perf_analyzer`` (a wrapper script where the runtime libraries are borrowed)."""
    ensure_clients()
    wrapper = VENV / "bin" / "perf_analyzer"
    with _locked():
        if wrapper.is_file():
            return wrapper
        if _glibc() >= WHEEL_GLIBC:
            _run(python(), "-m", "pip", "install", "--quiet", PERF_ANALYZER)
            return wrapper
        with tempfile.TemporaryDirectory() as tmp:
            _run(
                python(), "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                "--platform", f"manylinux_{WHEEL_GLIBC[0]}_{WHEEL_GLIBC[1]}_{platform.machine()}",
                "-d", tmp, PERF_ANALYZER,
            )  # fmt: skip
            (wheel,) = Path(tmp).glob("*.whl")
            with zipfile.ZipFile(wheel) as archive:
                binary = VENV / "runtime" / "perf_analyzer"
                binary.parent.mkdir(parents=True, exist_ok=True)
                binary.write_bytes(archive.read("perf_analyzer/bin/perf_analyzer"))
                binary.chmod(0o755)
            libraries = _debian_runtime(Path(tmp))
        loader = libraries / "ld-linux-x86-64.so.2"
        system = ":".join(str(p) for p in (Path("/lib/x86_64-linux-gnu"), Path("/usr/lib/x86_64-linux-gnu")))
        wrapper.write_text(
            "#!/bin/sh\n# perf_analyzer under Debian 13's C runtime (scripts/triton_env.py)\n"
            f'exec "{loader}" --library-path "{libraries}:{system}" "{binary}" "$@"\n'
        )
        wrapper.chmod(0o755)
    return wrapper


def _debian_runtime(tmp: Path) -> Path:
    """Debian 13's libc6, libstdc++6 and libgcc-s1 unpacked into .venv-triton/runtime/root/."""
    state = tmp / "apt"
    for folder in ("lists/partial", "archives/partial", "cache"):
        (state / folder).mkdir(parents=True, exist_ok=True)
    sources = state / "sources.list"
    sources.write_text(
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        f"http://deb.debian.org/debian {RUNTIME_SUITE} main\n"
    )
    options = [
        f"-o=Dir::Etc::sourcelist={sources}",
        "-o=Dir::Etc::sourceparts=-",
        f"-o=Dir::State::Lists={state / 'lists'}",
        f"-o=Dir::Cache={state / 'cache'}",
        "-o=APT::Sandbox::User=root",
    ]
    _run("apt-get", *options, "-qq", "update")
    _run("apt-get", *options, "-qq", "download", *RUNTIME_PACKAGES, cwd=tmp)
    root = VENV / "runtime" / "root"
    for package in tmp.glob("*.deb"):
        _run("dpkg-deb", "-x", package, root)
    return root / "usr" / "lib" / f"{platform.machine()}-linux-gnu"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--perf-analyzer", action="store_true", help="also install Triton's perf_analyzer")
    args = parser.parse_args()
    print(ensure_perf_analyzer() if args.perf_analyzer else ensure_clients())
    return 0


if __name__ == "__main__":
    sys.exit(main())
