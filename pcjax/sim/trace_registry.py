"""Where a named trace's file is, wherever the project is cloned: a small dataset registry.

The Mooncake FAST'25 traces (Apache-2.0) are pinned to one upstream commit and verified by their
git blob ids. `trace_file(name)` looks, in order, in:

1. ``$PCJAX_TRACES_DIR`` (a folder of the files under their `local_name`);
2. the user cache, ``$XDG_CACHE_HOME/pcjax/traces`` (``~/.cache/pcjax/traces`` by default);
3. the copy beside the repository, ``<repository>/../shared/traces`` (this project's workspace);

and otherwise downloads the file from the pinned commit into the user cache (written to a temp
file, checked against the blob id, then renamed into place, so a half-written or corrupt file is
never seen under the real name). Offline, it raises `TraceUnavailableError` saying where it
looked and where to put the file.

Example::

    path = trace_file("conversation")   # e.g. ~/.cache/pcjax/traces/mooncake_fast25_...jsonl

Host-only: plain Python, no jax.
"""

import dataclasses
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

UPSTREAM_REPO = "kvcache-ai/Mooncake"
UPSTREAM_COMMIT = "3b5a594133958449a1feaf1c9e0fc1b553e34a28"
UPSTREAM_SOURCE = f"https://raw.githubusercontent.com/{UPSTREAM_REPO}/{UPSTREAM_COMMIT}/"
ENV_DIR = "PCJAX_TRACES_DIR"
BESIDE_REPOSITORY = Path(__file__).resolve().parents[2].parent / "shared" / "traces"


@dataclasses.dataclass(frozen=True)
class TraceFile:
    """One registered trace: its file name here, its path upstream and its git blob id."""

    name: str
    local_name: str
    upstream_path: str
    git_blob_sha1: str
    license: str = "Apache-2.0"


def _mooncake(name: str, blob: str) -> TraceFile:
    return TraceFile(
        name,
        f"mooncake_fast25_{name}_trace.jsonl",
        f"FAST25-release/traces/{name}_trace.jsonl",
        blob,
    )


TRACES: dict[str, TraceFile] = {
    t.name: t
    for t in (
        _mooncake("conversation", "5a371794b81d7fc7487ec8a02a2c631bcc7fbdf8"),
        _mooncake("synthetic", "e4838049c0dcfc358a5f24ab08251279475cba94"),
        _mooncake("toolagent", "b765599d1e0828b37f68d481563c385d3c11de54"),
    )
}


class TraceUnavailableError(FileNotFoundError):
    """The trace is in none of the searched folders and could not be downloaded."""


class TraceHashMismatchError(ValueError):
    """Downloaded bytes do not have the pinned git blob id (nothing was written)."""


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a file with contents ``data`` (``git hash-object``)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pcjax/traces``, ``~/.cache/pcjax/traces`` when that is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pcjax" / "traces"


def search_dirs(extra: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched, in order: ``extra`` (e.g. an experiment's --traces_dir), then
    ``$PCJAX_TRACES_DIR``, the user cache and the copy beside the repository."""
    dirs = [extra, os.environ.get(ENV_DIR), user_cache_dir(), BESIDE_REPOSITORY]
    return [Path(d) for d in dirs if d]


def trace_file(
    name: str,
    *,
    traces_dir: str | os.PathLike | None = None,
    source: str = UPSTREAM_SOURCE,
    download: bool = True,
) -> Path:
    """The local path of registered trace ``name`` (see the module docstring for the order).

    Args:
      name: a key of `TRACES`.
      traces_dir: a folder searched first.
      source: the base URL of the upstream repository at the pinned commit (``file://`` URLs
        work: tests lay out a temp folder like the upstream repository).
      download: fetch the file when no folder has it.

    Raises:
      ValueError: ``name`` is not registered. TraceUnavailableError: not found and not
      downloaded. TraceHashMismatchError: the download does not have the pinned blob id.
    """
    local = find_local(name, traces_dir=traces_dir)
    if local is not None:
        return local
    if not download:
        reason = "downloads are off"
        raise TraceUnavailableError(_missing_message(TRACES[name], search_dirs(traces_dir), reason))
    return fetch_trace(TRACES[name], source)


def find_local(name: str, *, traces_dir: str | os.PathLike | None = None) -> Path | None:
    """The first searched folder's copy of trace ``name``; None if none has it (no download).

    Raises:
      ValueError: ``name`` is not registered.
    """
    if name not in TRACES:
        raise ValueError(f"unknown trace {name!r}; registered: {sorted(TRACES)}")
    for folder in search_dirs(traces_dir):
        if (folder / TRACES[name].local_name).is_file():
            return folder / TRACES[name].local_name
    return None


def fetch_trace(entry: TraceFile, source: str = UPSTREAM_SOURCE) -> Path:
    """Downloads ``entry`` from ``source`` into the user cache, verified and written atomically."""
    url = source.rstrip("/") + "/" + entry.upstream_path
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except (urllib.error.URLError, OSError) as err:
        raise TraceUnavailableError(
            _missing_message(entry, search_dirs(), f"downloading {url} failed: {err}")
        ) from err
    digest = git_blob_sha1(data)
    if digest != entry.git_blob_sha1:
        raise TraceHashMismatchError(
            f"{url}: git blob id {digest}, expected {entry.git_blob_sha1} (pinned at "
            f"{UPSTREAM_REPO}@{UPSTREAM_COMMIT}); nothing was written"
        )
    return _write_atomically(user_cache_dir() / entry.local_name, data)


def _write_atomically(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def _missing_message(entry: TraceFile, dirs: list[Path], why: str) -> str:
    searched = ", ".join(str(d) for d in dirs)
    return (
        f"trace {entry.name!r} ({entry.local_name}) is not in any of [{searched}] and {why}. "
        f"Download {UPSTREAM_SOURCE}{entry.upstream_path} ({entry.license}) into "
        f"{user_cache_dir()} or a folder named by ${ENV_DIR}."
    )
