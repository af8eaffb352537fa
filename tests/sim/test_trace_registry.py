"""The trace registry: lookup order, the verified atomic download (from a file:// source laid
out like the upstream repository) and its errors."""

import dataclasses

import pytest

from pcjax.sim import trace_registry as reg
from pcjax.sim.sources import open_trace

RECORD = b'{"timestamp": 0, "input_length": 700, "output_length": 3, "hash_ids": [0, 1]}\n'


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """A fresh user cache and no PCJAX_TRACES_DIR; the copy beside the repository is hidden."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(reg.ENV_DIR, raising=False)
    monkeypatch.setattr(reg, "BESIDE_REPOSITORY", tmp_path / "nowhere")
    return tmp_path


def _upstream(root, name: str, data: bytes) -> str:
    """A folder laid out like the upstream repository at the pinned commit; its file:// URL."""
    entry = reg.TRACES[name]
    path = root / "upstream" / entry.upstream_path
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return (root / "upstream").as_uri() + "/"


def _pin(monkeypatch, name: str, data: bytes) -> None:
    """Pins ``name`` to ``data``'s blob id (the real pins name the real multi-MB files)."""
    pinned = dataclasses.replace(reg.TRACES[name], git_blob_sha1=reg.git_blob_sha1(data))
    monkeypatch.setitem(reg.TRACES, name, pinned)


def test_git_blob_sha1_is_what_git_hash_object_gives():
    assert reg.git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"
    assert reg.git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"


def test_all_three_release_traces_are_registered_at_the_pinned_commit():
    assert set(reg.TRACES) == {"conversation", "synthetic", "toolagent"}
    assert reg.UPSTREAM_COMMIT in reg.UPSTREAM_SOURCE
    assert all(len(t.git_blob_sha1) == 40 for t in reg.TRACES.values())


def test_download_is_verified_and_written_into_the_user_cache(isolated, monkeypatch):
    _pin(monkeypatch, "toolagent", RECORD)
    source = _upstream(isolated, "toolagent", RECORD)
    path = reg.trace_file("toolagent", source=source)
    assert path == reg.user_cache_dir() / reg.TRACES["toolagent"].local_name
    assert path.read_bytes() == RECORD
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temp file left behind"
    # found locally from now on: a broken source is not asked again
    assert reg.trace_file("toolagent", source="file:///nonexistent/") == path
    trace = open_trace("toolagent")
    assert [r.input_length for r in trace.requests] == [700]


def test_a_hash_mismatch_raises_and_writes_nothing(isolated, monkeypatch):
    _pin(monkeypatch, "conversation", RECORD)
    source = _upstream(isolated, "conversation", RECORD.replace(b"700", b"701"))
    with pytest.raises(reg.TraceHashMismatchError, match="expected"):
        reg.trace_file("conversation", source=source)
    assert not reg.user_cache_dir().exists() or not any(reg.user_cache_dir().iterdir())


def test_offline_gives_a_clear_error(isolated):
    with pytest.raises(reg.TraceUnavailableError, match="PCJAX_TRACES_DIR"):
        reg.trace_file("synthetic", source=(isolated / "missing").as_uri() + "/")
    with pytest.raises(reg.TraceUnavailableError, match="downloads are off"):
        reg.trace_file("synthetic", download=False)
    with pytest.raises(ValueError, match="registered"):
        reg.trace_file("nope")


def test_lookup_order_env_dir_then_user_cache_then_beside_the_repository(isolated, monkeypatch):
    name = reg.TRACES["synthetic"].local_name
    folders = [isolated / d for d in ("env", "beside")]
    for folder in folders:
        folder.mkdir()
        (folder / name).write_bytes(RECORD)
    monkeypatch.setattr(reg, "BESIDE_REPOSITORY", folders[1])
    assert reg.trace_file("synthetic", download=False) == folders[1] / name
    reg.user_cache_dir().mkdir(parents=True)
    (reg.user_cache_dir() / name).write_bytes(RECORD)
    assert reg.trace_file("synthetic", download=False) == reg.user_cache_dir() / name
    monkeypatch.setenv(reg.ENV_DIR, str(folders[0]))
    assert reg.trace_file("synthetic", download=False) == folders[0] / name
    explicit = isolated / "explicit"
    explicit.mkdir()
    (explicit / name).write_bytes(RECORD)
    assert reg.trace_file("synthetic", traces_dir=explicit) == explicit / name
