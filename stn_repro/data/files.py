"""What every data set's module shares: where data live, the error a bad data file raises, and the
checked, retried, atomic download of one archive.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from stn_repro.io import publish_atomically

DATA_ENV = "STN_DATA"


class DataError(RuntimeError):
    """A data file is missing, corrupt or outdated. The message names the file and the fix."""


def default_data_dir() -> Path:
    """``$STN_DATA`` if set, else ``<project root>/data`` (the repository that contains this package)."""
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else Path(__file__).resolve().parents[2] / "data"


def download_verified(
    urls: Sequence[str],
    path: Path,
    check: Callable[[Path], str | None],
    *,
    attempts: int,
    corrupt_fix: str,
    offline_fix: str,
    timeout: float = 60,
) -> Path:
    """Download ``path`` from the first of ``urls`` that answers, check it, publish it; return ``path``.

    Each URL is tried ``attempts`` times, in order. A try streams the response into a temporary file in
    ``path``'s folder (which must exist) and calls ``check(temporary)``: ``None`` (or ``""``) means the
    file is good, and it is renamed onto ``path`` with :func:`publish_atomically` (the umask's ordinary
    permissions; readers never see a partial file); a string says what is wrong (e.g. ``"md5 <found>,
    expected <md5>"``). A try that fails on the network or the disk (``URLError``, ``OSError``,
    ``TimeoutError``) is recorded, and the next try follows after a pause of 1 s, 2 s, ... (by attempt).

    Raises :class:`DataError`
      - at once (no retry) when a download fails ``check``: "the download of <url> is not the official
        <path.name> (<problem>) and was discarded; fix: <corrupt_fix>";
      - when every try failed: "could not download <what> (no network?): <failures>. Fix: <offline_fix>",
        where, with one URL, ``<what>`` is that URL and the failures are the errors; with several,
        ``<what>`` is ``path.name`` and each failure is "<url>: <error>".

    The temporary file is removed whatever goes wrong; any other exception (``KeyboardInterrupt``, an
    error raised by ``check``) propagates unchanged after that.
    """
    urls = (urls,) if isinstance(urls, str) else tuple(urls)
    if not urls or attempts < 1:
        raise ValueError(f"download_verified needs at least one URL and attempt, got {urls!r}, {attempts}")
    path = Path(path)
    failures = []
    for url in urls:
        for attempt in range(attempts):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                    shutil.copyfileobj(response, out, 1 << 20)
                problem = check(Path(tmp))
                if problem:
                    raise DataError(
                        f"the download of {url} is not the official {path.name} ({problem}) and was "
                        f"discarded; fix: {corrupt_fix}"
                    )
                publish_atomically(tmp, path)
                return path
            except (urllib.error.URLError, OSError, TimeoutError) as error:
                Path(tmp).unlink(missing_ok=True)
                failures.append(f"{error}" if len(urls) == 1 else f"{url}: {error}")
                time.sleep(1.0 * (attempt + 1))
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    what = urls[0] if len(urls) == 1 else path.name
    raise DataError(f"could not download {what} (no network?): {'; '.join(failures)}. Fix: {offline_fix}")
