"""Put a checked copy of CUB-200-2011 in ``<data_dir>/CUB_200_2011/``: from a local archive or folder, or
downloaded from Caltech DATA with its md5 checked.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

from stn_repro.data.cub.index import ARCHIVE_NAME, CUB_FOLDER, SOURCE_ENV, read_cub_index
from stn_repro.data.files import DataError, default_data_dir, download_verified
from stn_repro.io import current_umask, md5_file

CUB_URLS = (
    "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
    "http://www.vision.caltech.edu/visipedia-data/CUB-200-2011/CUB_200_2011.tgz",
)
"""Where the official archive is served: Caltech DATA (the dataset's current home), then the old Caltech
Vision URL that older scripts use (kept as a fallback)."""


ARCHIVE_MD5 = "97eceeb196236b17998738112f37df78"
"""md5 of ``CUB_200_2011.tgz``. Caltech publishes none; this is the value that several independent public
loaders check the archive against (TDeVries' ``Cub2011`` dataset, Avalanche's ``CUB200``, the
pytorch-metric-learning ``CUB200`` dataset), not an official statement. No sha256 was found stated in a
public source, so none is checked. A mismatch is an error; an intact copy from elsewhere can still be used
as an extracted folder, which is checked by content (:data:`OFFICIAL_COUNTS`, every listed file)."""


DOWNLOAD_DIR = "cub"  # <data_dir>/cub/CUB_200_2011.tgz when downloaded


_SOURCE_HINT = (
    f"point --source or {SOURCE_ENV} at CUB_200_2011.tgz (or a folder holding it, or the CUB_200_2011/ "
    f"folder it extracts to), from {CUB_URLS[0].split('?')[0]}"
)


_DOWNLOAD_ATTEMPTS = 2


def prepare_cub(
    data_dir: Path | None = None,
    source: Path | None = None,
    *,
    download: bool = True,
    expect_official: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Put a checked CUB-200-2011 tree at ``<data_dir>/CUB_200_2011/`` and return it (``make data-cub``).

    ``source`` (else ``$STN_CUB_SOURCE``) is ``CUB_200_2011.tgz``, a folder holding it, the extracted
    ``CUB_200_2011/`` folder or a folder holding that. Without one the archive is downloaded into
    ``<data_dir>/cub/`` (``download``). An archive must match :data:`ARCHIVE_MD5` (with
    ``expect_official``); the tree must pass :func:`read_cub_index` (official counts, every listed image
    present) before it is renamed into place: it is extracted or copied into a temporary folder beside the
    target first, so an interrupted run never leaves a partial ``CUB_200_2011/``. A tree already in place
    that passes the checks is left alone; one that fails them is an error naming what is missing.
    """
    data_dir = Path(data_dir if data_dir is not None else default_data_dir())
    target = data_dir / CUB_FOLDER
    if target.exists():
        read_cub_index(target, expect_official=expect_official, synthetic=False)
        log(f"  {target}: up to date")
        return target
    if source is None and os.environ.get(SOURCE_ENV):
        source = Path(os.environ[SOURCE_ENV])
    if source is None:
        if not download:
            raise DataError(f"no CUB-200-2011 source given; fix: {_SOURCE_HINT}")
        log(f"no --source or ${SOURCE_ENV}: downloading {ARCHIVE_NAME} into {data_dir / DOWNLOAD_DIR}")
        source = download_cub(data_dir)
    source = Path(source)
    archive, tree = _locate_source(source)
    data_dir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=data_dir, prefix=".cub-extract-"))
    try:
        if archive is not None:
            if expect_official:
                log(f"  {archive}: checking md5")
                found = md5_file(archive)
                if found != ARCHIVE_MD5:
                    raise DataError(
                        f"{archive} is not the official {ARCHIVE_NAME} (md5 {found}, expected {ARCHIVE_MD5}); "
                        f"fix: delete it and download it again ({CUB_URLS[0].split('?')[0]})"
                    )
            log(f"  {archive}: extracting")
            try:
                with tarfile.open(archive, "r:gz") as tar:
                    tar.extractall(scratch, filter="data")
            except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
                raise DataError(
                    f"{archive} is corrupt or truncated ({error}); fix: delete it and copy or download it again"
                ) from None
            extracted = scratch / CUB_FOLDER
            if not (extracted / "images.txt").is_file():
                raise DataError(
                    f"{archive} holds no {CUB_FOLDER}/images.txt: not the CUB-200-2011 archive; fix: {_SOURCE_HINT}"
                )
        else:
            log(f"  {tree}: checking, then copying")
            read_cub_index(tree, expect_official=expect_official, synthetic=False)
            extracted = scratch / CUB_FOLDER
            shutil.copytree(tree, extracted, symlinks=False)
        read_cub_index(extracted, expect_official=expect_official, synthetic=False)
        os.chmod(extracted, 0o777 & ~current_umask())
        os.replace(extracted, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log(f"  {target}: ready")
    return target


def _locate_source(source: Path) -> tuple[Path | None, Path | None]:
    """``(archive, None)`` or ``(None, extracted tree)`` for a ``--source`` path."""
    if source.is_file():
        return source, None
    if not source.is_dir():
        raise DataError(f"CUB source {source} does not exist; fix: {_SOURCE_HINT}")
    if (source / "images.txt").is_file():
        return None, source
    if (source / CUB_FOLDER / "images.txt").is_file():
        return None, source / CUB_FOLDER
    if (source / ARCHIVE_NAME).is_file():
        return source / ARCHIVE_NAME, None
    raise DataError(
        f"CUB source {source} holds neither {ARCHIVE_NAME} nor a {CUB_FOLDER}/ folder with images.txt; "
        f"fix: {_SOURCE_HINT}"
    )


def download_cub(data_dir: Path | None = None) -> Path:
    """Download the official archive into ``<data_dir>/cub/`` (md5-checked before it is renamed into place;
    one already there with the right md5 is kept) and return its path. Network needed; about 1.1 GB."""
    folder = Path(data_dir if data_dir is not None else default_data_dir()) / DOWNLOAD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ARCHIVE_NAME
    if path.is_file() and md5_file(path) == ARCHIVE_MD5:
        return path
    fix = f"download it elsewhere and set {SOURCE_ENV}=/path/to/{ARCHIVE_NAME} (or pass --source)"
    return download_verified(
        CUB_URLS,
        path,
        _archive_md5_problem,
        attempts=_DOWNLOAD_ATTEMPTS,
        corrupt_fix=f"retry, or {fix}",
        offline_fix=fix,
    )


def _archive_md5_problem(archive: Path) -> str | None:
    """``None`` when ``archive`` has :data:`ARCHIVE_MD5`, else what it has instead."""
    found = md5_file(archive)
    return None if found == ARCHIVE_MD5 else f"md5 {found}, expected {ARCHIVE_MD5}"
