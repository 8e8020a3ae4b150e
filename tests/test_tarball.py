"""Tests for infra.store.tarball: deterministic packing and safe, atomic extraction."""

from __future__ import annotations

import gzip
import io
import os
import random
import tarfile
from pathlib import Path

import pytest

from infra.store.tarball import UnsafeArchive, pack_deterministic, safe_extract


def _make_repo(root: Path) -> Path:
    """A small Triton-like model repository."""
    (root / "text_embedding" / "1").mkdir(parents=True)
    (root / "text_embedding" / "config.pbtxt").write_text('name: "text_embedding"\nbackend: "onnxruntime"\n')
    (root / "text_embedding" / "1" / "model.onnx").write_bytes(random.Random(0).randbytes(300_000))
    (root / "tokenizer" / "1").mkdir(parents=True)
    (root / "tokenizer" / "1" / "model.py").write_text("print('hi')\n")
    (root / "tokenizer" / "config.pbtxt").write_text('name: "tokenizer"\n')
    run = root / "tokenizer" / "run.sh"
    run.write_text("#!/bin/sh\n")
    run.chmod(0o700)
    (root / "empty_dir").mkdir()
    return root


def _tree(root: Path) -> dict[str, tuple[str, bytes | None, bool]]:
    """relative path -> (kind, content, executable) for comparing trees."""
    out: dict[str, tuple[str, bytes | None, bool]] = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_dir():
            out[rel] = ("dir", None, True)
        else:
            out[rel] = ("file", path.read_bytes(), bool(path.stat().st_mode & 0o111))
    return out


def _listing(directory: Path) -> list[str]:
    return sorted(os.listdir(directory))


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return _make_repo(tmp_path / "repo")


# --------------------------------------------------------------------------- packing


def test_pack_is_deterministic(repo: Path, tmp_path: Path) -> None:
    sha1, size1 = pack_deterministic(repo, tmp_path / "a.tar.gz")
    sha2, size2 = pack_deterministic(repo, tmp_path / "b.tar.gz")
    assert (sha1, size1) == (sha2, size2)
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    assert size1 == (tmp_path / "a.tar.gz").stat().st_size
    assert len(sha1) == 64

    # timestamps, permissions of the umask kind, and a fresh copy of the tree do not matter
    os.utime(repo / "text_embedding" / "config.pbtxt", (1_000_000, 1_000_000))
    os.utime(repo / "tokenizer", (2_000_000, 2_000_000))
    (repo / "tokenizer" / "config.pbtxt").chmod(0o600)
    sha3, _ = pack_deterministic(repo, tmp_path / "c.tar.gz")
    assert sha3 == sha1
    assert (tmp_path / "c.tar.gz").read_bytes() == (tmp_path / "a.tar.gz").read_bytes()

    # content does matter
    (repo / "tokenizer" / "config.pbtxt").write_text('name: "tokenizer2"\n')
    assert pack_deterministic(repo, tmp_path / "d.tar.gz")[0] != sha1

    # gzip header: mtime 0, no file name
    header = (tmp_path / "a.tar.gz").read_bytes()[:10]
    assert header[:3] == b"\x1f\x8b\x08"
    assert header[3] & 0x08 == 0  # FNAME flag not set
    assert header[4:8] == b"\0\0\0\0"


def test_pack_layout_and_normalized_metadata(repo: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out" / "repo.tar.gz"  # parent created
    pack_deterministic(repo, dest)
    with tarfile.open(dest) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == [
        "empty_dir",
        "text_embedding",
        "text_embedding/1",
        "text_embedding/1/model.onnx",
        "text_embedding/config.pbtxt",
        "tokenizer",
        "tokenizer/1",
        "tokenizer/1/model.py",
        "tokenizer/config.pbtxt",
        "tokenizer/run.sh",
    ]
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        expected = 0o755 if m.isdir() or m.name.endswith("run.sh") else 0o644
        assert m.mode == expected, m.name
    assert _listing(dest.parent) == ["repo.tar.gz"]
    with gzip.open(dest) as f:  # plain stdlib can read it
        assert f.read(1)


def test_pack_refuses_symlinks(repo: Path, tmp_path: Path) -> None:
    (repo / "tokenizer" / "link").symlink_to("/etc/passwd")
    with pytest.raises(ValueError, match="tokenizer/link"):
        pack_deterministic(repo, tmp_path / "x.tar.gz")
    assert _listing(tmp_path) == ["repo"]  # no dest, no temp


def test_pack_failure_leaves_no_dest_or_temp(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_addfile = tarfile.TarFile.addfile
    calls = []

    def failing_addfile(self, tarinfo, fileobj=None):
        calls.append(tarinfo.name)
        if len(calls) == 4:
            raise OSError("read error half way")
        return real_addfile(self, tarinfo, fileobj)

    monkeypatch.setattr(tarfile.TarFile, "addfile", failing_addfile)
    with pytest.raises(OSError, match="half way"):
        pack_deterministic(repo, tmp_path / "x.tar.gz")
    assert _listing(tmp_path) == ["repo"]


def test_pack_refuses_dest_inside_source_and_bad_level(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="inside"):
        pack_deterministic(repo, repo / "self.tar.gz")
    with pytest.raises(ValueError, match="compresslevel"):
        pack_deterministic(repo, tmp_path / "x.tar.gz", compresslevel=10)
    assert _listing(tmp_path) == ["repo"]
    assert not (repo / "self.tar.gz").exists()


# --------------------------------------------------------------------------- extraction


def test_round_trip(repo: Path, tmp_path: Path) -> None:
    archive = tmp_path / "repo.tar.gz"
    pack_deterministic(repo, archive)
    out = safe_extract(archive, tmp_path / "cache" / "extracted")
    assert out == tmp_path / "cache" / "extracted"
    assert _tree(out) == _tree(repo)
    assert _listing(tmp_path / "cache") == ["extracted"]  # no temp dir left
    assert (out.stat().st_mode & 0o777) == 0o755


def test_extract_plain_tar_and_dot_slash_names(tmp_path: Path) -> None:
    archive = tmp_path / "plain.tar"
    with tarfile.open(archive, "w") as tar:
        _add_bytes(tar, "./m/config.pbtxt", b"cfg")
    out = safe_extract(archive, tmp_path / "out")
    assert (out / "m" / "config.pbtxt").read_bytes() == b"cfg"


def test_extract_refuses_existing_dest(repo: Path, tmp_path: Path) -> None:
    archive = tmp_path / "repo.tar.gz"
    pack_deterministic(repo, archive)
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="out"):
        safe_extract(archive, tmp_path / "out")
    assert os.listdir(tmp_path / "out") == []


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def _malicious(path: Path, build) -> Path:
    """A .tar.gz with a harmless first member, then whatever ``build`` adds."""
    with tarfile.open(path, "w:gz") as tar:
        _add_bytes(tar, "ok/config.pbtxt", b"fine")
        build(tar)
    return path


MALICIOUS = {
    "dotdot": (lambda t: _add_bytes(t, "../evil", b"pwned"), "'..'"),
    "nested_dotdot": (lambda t: _add_bytes(t, "ok/../../evil", b"pwned"), "'..'"),
    "absolute": (lambda t: _add_bytes(t, "/tmp/abs_evil", b"pwned"), "absolute"),
    "symlink_etc_passwd": (lambda t: _add_link(t, "ok/passwd", "/etc/passwd", tarfile.SYMTYPE), "link"),
    "symlink_then_write_through": (
        lambda t: (_add_link(t, "ok/esc", "../..", tarfile.SYMTYPE), _add_bytes(t, "ok/esc/evil", b"pwned")),
        "link",
    ),
    "hardlink_outside": (lambda t: _add_link(t, "ok/hl", "../../etc/passwd", tarfile.LNKTYPE), "link"),
    "hardlink_absolute": (lambda t: _add_link(t, "ok/hl", "/etc/passwd", tarfile.LNKTYPE), "link"),
    "fifo": (lambda t: t.addfile(_typed("ok/fifo", tarfile.FIFOTYPE)), "special"),
    "chardev": (lambda t: t.addfile(_typed("ok/null", tarfile.CHRTYPE)), "special"),
}


def _typed(name: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_extract_refuses_malicious_members(case: str, tmp_path: Path) -> None:
    build, reason = MALICIOUS[case]
    archives = tmp_path / "archives"
    archives.mkdir()
    archive = _malicious(archives / f"{case}.tar.gz", build)
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))

    with pytest.raises(UnsafeArchive) as excinfo:
        safe_extract(archive, work / "out")
    message = str(excinfo.value)
    assert str(archive) in message and reason in message

    after = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert after == before  # nothing new anywhere under tmp_path, no temp dir left
    assert not Path("/tmp/abs_evil").exists()


@pytest.fixture
def corrupt_cases(tmp_path: Path) -> dict[str, bytes]:
    """Broken variants of a good archive, built outside the extraction directory."""
    src = tmp_path / "src"
    src.mkdir()
    repo = _make_repo(src / "repo")
    good = src / "good.tar.gz"
    pack_deterministic(repo, good)
    data = good.read_bytes()
    noise = random.Random(1234).randbytes(8192)
    assert noise[:2] != b"\x1f\x8b"
    return {
        "truncated_half": data[: len(data) // 2],
        "truncated_trailer": data[:-4],  # tar content complete, gzip CRC/length missing
        "bad_crc": data[:-8] + bytes(8),
        "random_bytes": noise,
        "gzip_magic_then_noise": b"\x1f\x8b" + noise,
        "empty": b"",
    }


@pytest.mark.parametrize(
    "case", ["truncated_half", "truncated_trailer", "bad_crc", "random_bytes", "gzip_magic_then_noise", "empty"]
)
def test_extract_refuses_corrupt_archives(case: str, corrupt_cases: dict[str, bytes], tmp_path: Path) -> None:
    archive = tmp_path / f"{case}.tar.gz"
    archive.write_bytes(corrupt_cases[case])
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(UnsafeArchive, match="is not a valid tar.gz") as excinfo:
        safe_extract(archive, work / "out")
    assert str(archive) in str(excinfo.value)
    assert os.listdir(work) == []


def test_extract_missing_archive(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        safe_extract(tmp_path / "nope.tar.gz", tmp_path / "out")
    assert _listing(tmp_path) == []
