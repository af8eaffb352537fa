"""Builds pcjax's C++ XLA FFI handlers on first use and registers them with jax (CPU only).

A handler's source ships in the package (``pcjax/kernels/csrc/*.cc``, sharing ``csrc/*.h``);
`load` compiles it once per machine with the system C++ compiler against the FFI headers of the
installed jaxlib (``jax.ffi.include_dir()``), tuned for this CPU (``-march=native``), and keeps
the shared library in a cache folder, named by a hash of everything that went into it (sources,
jaxlib, compiler, flags, CPU model), so a changed source or a new jax rebuilds and parallel
builders never see a half-written file. The same lazy build-and-cache is how torch's
cpp_extension and Triton ship native code without a build step at install time.

Environment:
  PCJAX_CACHE_DIR: where libraries go (default ``$XDG_CACHE_HOME/pcjax`` or ``~/.cache/pcjax``).
  CXX: the compiler (default ``c++``).
  PCJAX_NATIVE=0: never build; `load` raises `NativeUnavailable`, and callers fall back.
"""

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax

_SOURCE_DIR = Path(__file__).parent / "csrc"
_FLAGS = ("-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno")


class NativeUnavailable(RuntimeError):
    """A native handler could not be built or loaded here (no compiler, disabled, build error)."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("PCJAX_CACHE_DIR") or Path(base) / "pcjax")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def _build(source: Path, compiler: str) -> Path:
    """Compiles `source` unless a library built from the same inputs is cached; returns it."""
    include = jax.ffi.include_dir()
    flags = (*_FLAGS, f"-I{include}", f"-I{source.parent}")
    headers = [h.read_bytes() for h in sorted(source.parent.glob("*.h"))]
    digest = hashlib.sha256()
    for part in (
        source.read_bytes(),
        *headers,
        jax.__version__,
        compiler,
        " ".join(flags),
        _cpu_model(),
    ):
        digest.update(part if isinstance(part, bytes) else part.encode())
    library = cache_dir() / f"{source.stem}-{digest.hexdigest()[:16]}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        built = Path(tmp) / library.name
        command = [compiler, *flags, str(source), "-o", str(built)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise NativeUnavailable(
                f"building {source.name} failed ({' '.join(command)}):\n{result.stderr[-4000:]}"
            )
        os.replace(built, library)  # atomic: another process may have won the race, same bytes
    return library


_outcomes: dict[tuple, NativeUnavailable | None] = {}  # per load() arguments: None = loaded


def load(source_name: str, symbols: tuple[tuple[str, str], ...]) -> None:
    """Builds (or finds) the library of ``csrc/<source_name>`` and registers its handlers.

    Args:
      source_name: the C++ file in ``csrc``, e.g. ``"ragged_paged_attention.cc"``.
      symbols: ``(exported handler symbol, FFI target name)`` pairs, registered for platform cpu.

    Raises:
      NativeUnavailable: disabled by ``PCJAX_NATIVE=0``, no compiler, or a failed build/load.
      The outcome is remembered per process: later calls return at once or raise the same error.
    """
    key = (source_name, symbols)
    if key not in _outcomes:
        try:
            _register(source_name, symbols)
            _outcomes[key] = None
        except (NativeUnavailable, OSError) as error:
            _outcomes[key] = (
                error if isinstance(error, NativeUnavailable) else NativeUnavailable(str(error))
            )
    if _outcomes[key] is not None:
        raise _outcomes[key]


def _register(source_name: str, symbols: tuple[tuple[str, str], ...]) -> None:
    if os.environ.get("PCJAX_NATIVE", "1") == "0":
        raise NativeUnavailable("native kernels are disabled (PCJAX_NATIVE=0)")
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise NativeUnavailable(f"no C++ compiler {compiler!r} on PATH (set CXX)")
    library = ctypes.cdll.LoadLibrary(str(_build(_SOURCE_DIR / source_name, compiler)))
    for symbol, target in symbols:
        handler = jax.ffi.pycapsule(getattr(library, symbol))
        jax.ffi.register_ffi_target(target, handler, platform="cpu")
