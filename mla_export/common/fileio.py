"""Writing files so that readers see the old file or the whole new one, and checking the paths a command
is given: outputs (directory, permissions, UTF-8, not an input) and inputs (a regular file, a directory).

Every write stages its files in a folder `.mla-export-<pid>-<token>/` beside the target and renames
them into place. A staging folder whose process is gone (a SIGKILL, a power cut) is recognisable by
its name and removed by the next write into that directory (`remove_stale_staging`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterator

from .errors import UserError

STAGING_PREFIX = ".mla-export-"
_STAGING = re.compile(rf"{re.escape(STAGING_PREFIX)}(\d+)-[0-9a-f]+")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(directory: Path) -> None:
    """Remove the staging folders in `directory` whose process is gone."""
    try:
        entries = list(Path(directory).glob(f"{STAGING_PREFIX}*"))
    except OSError:
        return
    for entry in entries:
        match = _STAGING.fullmatch(entry.name)
        if match and entry.is_dir() and not process_alive(int(match.group(1))):
            shutil.rmtree(entry, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(directory: Path) -> Iterator[Path]:
    """A fresh staging folder in `directory` (the target's file system, so renames out of it are atomic),
    removed on the way out whatever happens; stale ones of dead processes are removed first."""
    directory = Path(directory)
    remove_stale_staging(directory)
    staging = directory / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_failed(path: Path, exc: OSError) -> UserError:
    """The one message for an OSError while writing `path` (disk full, permissions, ...)."""
    reason = exc.strerror or str(exc)
    hint = "; free some space and run it again" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else ""
    return UserError(f"writing {path} failed ({reason}){hint}; nothing was replaced")


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_staged(staging: Path, name: str, data: bytes) -> Path:
    """Write `data` to `staging/name` with the usual permissions (0666 & ~umask)."""
    path = staging / name
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(path, 0o666 & ~_umask())
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` so that readers see either the old file or the whole new one.

    An OSError (disk full, permissions) becomes a UserError naming `path`; the old file is left as it was."""
    path = Path(path)
    try:
        with staging_dir(path.parent) as staging:
            os.replace(write_staged(staging, path.name, data), path)
    except OSError as exc:
        raise write_failed(path, exc) from None
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def same_path(a: str | Path, b: str | Path) -> bool:
    """Whether `a` and `b` name the same file (the same inode where both exist, else the same absolute path)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return Path(os.path.abspath(a)) == Path(os.path.abspath(b))


def shown(path: str | Path) -> str:
    """`path` as a message shows it: bytes that are not UTF-8 written as \\xNN (as the shell writes them)."""
    return os.fsencode(str(path)).decode("utf-8", errors="backslashreplace")


def check_input_file(option: str, path: str | Path, hint: str = "") -> Path:
    """An input file that exists and is a regular file (a device or FIFO would block or read nothing), or one
    UserError saying what it is instead; `hint` ("; pass ...") is added to the message."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {shown(path)}: is a directory, expected a file{hint}")
    if not path.exists():
        raise UserError(f"{option} {shown(path)}: no such file{hint}")
    if not path.is_file():
        raise UserError(f"{option} {shown(path)}: not a regular file (a device, FIFO or socket){hint}")
    return path


def check_input_dir(option: str, path: str | Path, hint: str = "") -> Path:
    """An input directory that exists, or one UserError saying what `path` is instead."""
    path = Path(path)
    if path.is_dir():
        return path
    if path.is_file():
        raise UserError(f"{option} {shown(path)}: is a file, expected a directory{hint}")
    if path.exists():
        raise UserError(f"{option} {shown(path)}: not a directory (a device, FIFO or socket){hint}")
    raise UserError(f"{option} {shown(path)}: no such directory{hint}")


def check_utf8_name(option: str, path: str | Path) -> None:
    """Refuse an output path that is not valid UTF-8 (bytes the file system takes but a UTF-8 string, such as
    an ONNX file's record of its data file or a JSON report, cannot hold)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{option} {shown(path)}: the path is not valid UTF-8; choose a name in UTF-8") from None


def check_output_dir(option: str, path: Path) -> None:
    """The directory `path` goes in exists, is a directory and is writable."""
    parent = path.parent
    if parent.is_dir():
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"{option} {shown(path)}: directory {shown(parent)} is not writable")
        return
    if parent.exists():
        raise UserError(f"{option} {shown(path)}: {shown(parent)} is a file, expected a directory")
    raise UserError(f"{option} {shown(path)}: directory {shown(parent)} does not exist")


def check_output_file(option: str, path: str | Path, inputs: dict[str, str | Path | None] | None = None,
                      suffix: str | None = None) -> Path:
    """Check an output option before any work: a UTF-8 name, not a directory, in an existing writable
    directory, ending in `suffix` (if given), and not one of `inputs` ({option or description: path}, None
    entries skipped)."""
    path = Path(path)
    check_utf8_name(option, path)
    if suffix is not None and path.suffix != suffix:
        raise UserError(f"{option} {path}: expected a path ending in {suffix}")
    if path.is_dir():
        raise UserError(f"{option} {path}: is a directory; expected a file path")
    check_output_dir(option, path)
    if path.exists() and not path.is_file():
        raise UserError(f"{option} {path}: exists and is not a regular file")
    for what, other in (inputs or {}).items():
        if other is not None and same_path(path, other):
            raise UserError(f"{option} {path}: is also {what}; writing it would replace that file: choose another "
                            "path")
    return path
