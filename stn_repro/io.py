"""Files written so that no reader ever sees half of one, and the checksums that name them.

The lowest layer of the library: every other module that writes a file (a record, a checkpoint, a stored
data set, a table) writes it through :func:`publish_atomically` (a finished temporary file renamed into
place), so a killed process leaves at most a hidden ``.<name>.*.tmp`` beside the file, never a partial file
under its real name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def publish_atomically(tmp: str | Path, path: Path) -> None:
    """Rename a finished temporary file onto ``path`` with ordinary permissions (the umask's: ``mkstemp``
    makes its files 0600, which would leave records and weights unreadable to anyone else)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` as :func:`atomic_write_bytes` does."""
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes: how a record names the weights it used (e.g. co-localisation's e())."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder (made if missing), then rename: readers never see a
    partial file, and a failed write (a full disk) leaves the file it was to replace as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        publish_atomically(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def md5_file(path: Path) -> str:
    """The md5 hex digest of the file at ``path``, read a megabyte at a time."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back): the permissions a folder made with
    ``mkdtemp`` (0700) gets before it is renamed into place, as a plain ``mkdir`` would have made it."""
    umask = os.umask(0)
    os.umask(umask)
    return umask
