"""Download, verify (md5) and extract the PASCAL VOC archives.

    python data/download_voc.py --root data          # -> data/VOCdevkit/VOC2007, data/VOCdevkit/VOC2012
    python -m yolo.data.download --root data --mirror https://my.mirror/voc

What a user can rely on:

* Every server is contacted (short timeout) before anything is written: offline, the command fails at
  once, names the archives, their md5 and where to put them by hand, and leaves nothing behind.
* Downloads go to ``ROOT/<archive>.part`` and are resumed from there (HTTP Range) when the command is
  run again after an interruption; this is the only partial file ever left, and only after an
  interrupted transfer. A verified archive is renamed to ``ROOT/<archive>`` only when its md5 matches;
  a ``.part`` whose md5 does not match is deleted.
* Archives already in ``ROOT`` (downloaded before or put there by hand) are verified, not downloaded.
  A mismatching archive is reported and left alone (delete it to download it again).
* Extraction (into ``ROOT``, which the archives populate with ``VOCdevkit/VOC2007`` and
  ``VOCdevkit/VOC2012``) refuses absolute paths and links leaving ``ROOT`` (tarfile's ``data`` filter);
  the archives are kept unless ``--delete-archives``.
"""
import argparse
import hashlib
import http.client
import logging
import os
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Archive:
    filename: str
    url: str
    md5: str


# The official host (host.robots.ox.ac.uk, now served as thor.robots.ox.ac.uk, as in torchvision).
_VOC_HOST = "https://thor.robots.ox.ac.uk/pascal/VOC"
VOC_ARCHIVES = (
    Archive("VOCtrainval_06-Nov-2007.tar", f"{_VOC_HOST}/voc2007/VOCtrainval_06-Nov-2007.tar",
            "c52e279531787c972589f7e41ab4ae64"),
    Archive("VOCtest_06-Nov-2007.tar", f"{_VOC_HOST}/voc2007/VOCtest_06-Nov-2007.tar",
            "b6e924de25625d8de591ea690078ad9f"),
    Archive("VOCtrainval_11-May-2012.tar", f"{_VOC_HOST}/voc2012/VOCtrainval_11-May-2012.tar",
            "6cd6e144f989b92b3379bac3b3de84fd"),
)


class DownloadError(RuntimeError):
    """A download that cannot proceed; the message says what to do."""


def file_md5(path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def archive_url(archive: Archive, mirror: str | None) -> str:
    """The official URL, or ``<mirror>/<filename>`` (mirrors are flat)."""
    return archive.url if mirror is None else f"{mirror.rstrip('/')}/{archive.filename}"


def manual_instructions(root: Path, archives, mirror: str | None) -> str:
    lines = [f"Download these files by hand and put them in {root.resolve()}/ (then re-run this command,"
             " which verifies and extracts them):"]
    lines += [f"  {a.filename}  md5 {a.md5}  from {archive_url(a, mirror)}" for a in archives]
    return "\n".join(lines)


def check_reachable(archives, mirror: str | None, timeout: float) -> None:
    """HEAD request to every URL; raises DownloadError naming the first unreachable one."""
    for archive in archives:
        url = archive_url(archive, mirror)
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                pass
        except urllib.error.HTTPError as error:
            if error.code not in (405, 501):     # a server without HEAD support is still reachable
                raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
        except (urllib.error.URLError, OSError) as error:
            raise DownloadError(f"cannot reach {url}: {getattr(error, 'reason', error)}") from None


def fetch(url: str, part: Path, timeout: float, progress: bool = False) -> None:
    """Appends the rest of ``url`` to ``part``, resuming at its current size with an HTTP Range request.

    A server that ignores Range (status 200) makes the download restart from zero. Raises
    http.client.IncompleteRead when the server announced more bytes than it sent.
    """
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416:       # Range not satisfiable: the .part already holds the whole file
            return
        raise
    with response:
        resumed = offset > 0 and response.status == 206
        if offset and not resumed:
            logger.info("%s: server ignored the Range request, restarting the download", url)
        total = int(response.headers.get("Content-Length", 0)) + (offset if resumed else 0)
        bar = _progress_bar(part.name, total, offset if resumed else 0, progress)
        with open(part, "ab" if resumed else "wb") as f:
            for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                f.write(chunk)
                bar.update(len(chunk))
        bar.close()
    if total and part.stat().st_size < total:
        raise http.client.IncompleteRead(b"", total - part.stat().st_size)


def _progress_bar(name: str, total: int, initial: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total or None, initial=initial, unit="B", unit_scale=True, desc=name,
                disable=not enabled)


def download_archive(archive: Archive, root: Path, mirror: str | None, timeout: float,
                     progress: bool) -> Path:
    """``root/<filename>``, verified; downloaded (or resumed) first when absent."""
    target = root / archive.filename
    if target.exists():
        if file_md5(target) != archive.md5:
            raise DownloadError(f"{target} exists but its md5 is not {archive.md5}: it is corrupted or "
                                f"incomplete; delete it and run again")
        logger.info("%s already present and verified", target)
        return target
    part = root / f"{archive.filename}.part"
    url = archive_url(archive, mirror)
    try:
        fetch(url, part, timeout, progress)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        kept = part.stat().st_size if part.exists() else 0
        raise DownloadError(f"download of {url} interrupted ({getattr(error, 'reason', error)}); "
                            f"{kept} bytes kept in {part}: run the same command again to resume") from None
    digest = file_md5(part)
    if digest != archive.md5:
        part.unlink()
        raise DownloadError(f"{url}: md5 {digest} does not match the expected {archive.md5}; the partial "
                            f"file was deleted, run again to download it from scratch")
    os.replace(part, target)
    return target


def extract(archive_path: Path, root: Path) -> None:
    """Extracts a tar into ``root``, refusing members that would land outside it (DownloadError)."""
    try:
        with tarfile.open(archive_path) as tar:
            tar.extractall(root, filter="data")
    except tarfile.TarError as error:
        raise DownloadError(f"{archive_path}: refusing to extract: {error}") from None


def download(root, archives=VOC_ARCHIVES, mirror: str | None = None, timeout: float = 10.0,
             progress: bool = False, delete_archives: bool = False) -> Path:
    """Downloads (resumably), verifies and extracts ``archives`` into ``root``; returns ``root/VOCdevkit``.

    Raises DownloadError with instructions (including where to put the files by hand) when a server
    cannot be reached, a transfer breaks, or a checksum does not match.
    """
    root = Path(root)
    missing = [a for a in archives if not (root / a.filename).exists()]
    try:
        check_reachable(missing, mirror, timeout)
    except DownloadError as error:
        raise DownloadError(f"{error}\n{manual_instructions(root, archives, mirror)}") from None
    root.mkdir(parents=True, exist_ok=True)
    paths = [download_archive(a, root, mirror, timeout, progress) for a in archives]
    for path in paths:
        logger.info("extracting %s", path)
        extract(path, root)
        if delete_archives:
            path.unlink()
    return root / "VOCdevkit"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Download, verify (md5) and extract PASCAL VOC 2007+2012.")
    parser.add_argument("--root", default="data", help="destination folder (gets VOCdevkit/VOC2007, VOC2012)")
    parser.add_argument("--mirror", help="base URL of a flat mirror holding the three .tar files")
    parser.add_argument("--timeout", type=float, default=10.0, help="connection timeout in seconds")
    parser.add_argument("--delete-archives", action="store_true",
                        help="delete the .tar files after extraction")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        devkit = download(args.root, mirror=args.mirror, timeout=args.timeout, progress=sys.stderr.isatty(),
                          delete_archives=args.delete_archives)
    except DownloadError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"VOC ready in {devkit}; use --data-root {args.root} --data 2007:trainval+2012:trainval")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
