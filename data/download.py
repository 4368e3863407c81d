"""Fetching MPIIGaze: a download that never leaves half an archive, and an unpacking that never escapes its folder."""
import http.client
import os
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from data.reports import DataError
from utils import atomic_write

MPIIGAZE_URL = "http://datasets.d2.mpi-inf.mpg.de/MPIIGaze/MPIIGaze.tar.gz"
DOWNLOAD_TIMEOUT_SECS = 60


def fetch_mpiigaze(gaze_dir, real_dir, url=MPIIGAZE_URL):
    """Download MPIIGaze and unpack it into gaze_dir; DataError (with what to do by hand) if it fails."""
    archive = os.path.join(gaze_dir, os.path.basename(url))
    try:
        os.makedirs(gaze_dir, exist_ok=True)
        if not os.path.exists(archive):
            download(url, archive)
        safe_extract(archive, gaze_dir)
    except DataError as error:
        raise DataError(f"{error}. Download {url} by hand and unpack it so that "
                        f"{os.path.join(real_dir, 'Data', 'Normalized', 'p00', 'day01.mat')} exists") from None
    os.remove(archive)


def download(url, path, timeout=DOWNLOAD_TIMEOUT_SECS):
    """Fetch url to path with a progress bar; path appears only once every byte has arrived."""
    atomic_write(path, lambda handle: _fetch(url, handle, timeout))


def _fetch(url, handle, timeout):
    """Stream url into handle; DataError if the network fails or the body is shorter than announced."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            expected = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with tqdm(total=expected, unit="B", unit_scale=True, desc=f"Download {os.path.basename(url)}") as bar:
                while chunk := response.read(1 << 20):
                    handle.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as error:
        reason = getattr(error, "reason", None) or getattr(error, "strerror", None) or error
        raise DataError(f"cannot download {url} ({reason})") from None
    if expected is not None and received != expected:
        raise DataError(f"download of {url} stopped at {received} of {expected} bytes")


def safe_extract(archive, target):
    """Unpack a tar into target, refusing absolute paths, `..`, links leading out, and device files."""
    root = os.path.realpath(target)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, root)
            tar.extractall(root, members=members, filter="data")  # a second guard, by the standard library
    except (tarfile.TarError, EOFError, OSError) as error:
        raise DataError(f"cannot unpack {archive}: {error}") from None


def _check_member(member, root):
    def inside(path):
        resolved = os.path.realpath(os.path.join(root, path))
        return resolved == root or resolved.startswith(root + os.sep)

    name = member.name
    if os.path.isabs(name) or ".." in Path(name).parts or not inside(name):
        raise DataError(f"refusing archive member {name!r}: it points outside {root}")
    if member.isdev() or not (member.isfile() or member.isdir() or member.issym() or member.islnk()):
        raise DataError(f"refusing archive member {name!r}: not a regular file, folder or link")
    if member.issym() and not inside(os.path.join(os.path.dirname(name), member.linkname)):
        raise DataError(f"refusing archive member {name!r}: a link to {member.linkname!r} outside {root}")
    if member.islnk() and not inside(member.linkname):
        raise DataError(f"refusing archive member {name!r}: a hard link to {member.linkname!r} outside {root}")
