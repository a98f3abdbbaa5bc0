"""Where everything lives in the workspace, and the atomic-write helpers every writer uses.

Layout of a workspace (default ``./abaw-work``, ``--work`` or ``ABAW_WORK``)::

    demo-data/            the built-in synthetic release (generated on first use)
    faces/<split>/        the face store of one split (see abaw_kit.data.store)
    unlabeled/            the unlabelled index built by ``abaw ingest``
    runs/<name>/          one training run (its files: abaw_kit.run_dir.RunDir)
    runs/LATEST           name of the most recent run
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from abaw_kit import demo
from abaw_kit.errors import AbawError

DEFAULT_WORKSPACE = "abaw-work"
SPLITS = ("train", "val", "test")
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


def check_run_name(name: str) -> str:
    """``name`` when it is a plain run name (one path component), else a clear error.

    Why: every command joins the name under ``runs/``; a name with ``/`` or ``..`` would let
    ``evaluate``, ``submit`` or ``train --resume`` read and write folders of another workspace.
    """
    if not _RUN_NAME.fullmatch(name) or ".." in name:
        raise AbawError(f"run name '{name}' is not a plain name: use letters, digits, '.', "
                        "'_', '+' and '-' (at most 128, no '/' or '..'), e.g. dtm-lr3e-4")
    return name


def check_split(split: str) -> str:
    """``split`` when it is one of ``SPLITS``, else a clear error (it becomes a folder name)."""
    if split not in SPLITS:
        raise AbawError(f"unknown split '{split}': expected one of {', '.join(SPLITS)}")
    return split


@dataclass(frozen=True)
class Workspace:
    """Paths inside one workspace folder; creating the object does no I/O."""

    root: Path

    @classmethod
    def resolve(cls, work: str | Path | None = None) -> Workspace:
        """The workspace from ``--work``, else ``$ABAW_WORK``, else ``./abaw-work``."""
        chosen = work or os.environ.get("ABAW_WORK") or DEFAULT_WORKSPACE
        return cls(Path(chosen).expanduser().resolve())

    def ensure(self) -> Workspace:
        """Create the root folder, with a clear error when that is impossible."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / ".write-probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise AbawError(f"workspace {self.root} is not writable ({exc.strerror or exc}); "
                            "choose another with --work or ABAW_WORK") from exc
        return self

    @property
    def demo_data(self) -> Path:
        return self.root / "demo-data"

    def store_dir(self, split: str) -> Path:
        return self.root / "faces" / check_split(split)

    @property
    def unlabeled_dir(self) -> Path:
        return self.root / "unlabeled"

    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    @property
    def source_file(self) -> Path:
        """Records which data root `prepare` used, so later commands find the same release."""
        return self.root / "source.json"

    def read_source(self) -> SourceRecord | None:
        """The record `prepare` wrote, or None before `prepare`; a damaged one is an error
        (the one way reading it fails: see ``SourceRecord.read``)."""
        return SourceRecord.read(self.source_file)

    def data_root(self) -> Path | None:
        """The release folder `prepare` read, or None before `prepare`."""
        record = self.read_source()
        return record.data_root if record else None

    def is_demo(self) -> bool:
        """Whether `prepare` used a demo release (False before `prepare`)."""
        record = self.read_source()
        return record is not None and record.is_demo

    def run_path(self, name: str) -> Path:
        """Where run ``name`` lives (it may not exist yet); the name is checked first."""
        return safe_join(self.runs_dir, check_run_name(name))

    def run_dir(self, name: str | None = None) -> Path:
        """The folder of run ``name``; without a name, the latest run (clear error if none).

        A plain path, as every command's API takes it; ``RunDir(path)`` names its files."""
        if name:
            path = self.run_path(name)
            if not path.is_dir():
                raise AbawError(f"no run named '{name}' in {self.runs_dir}; "
                                "list runs with `ls` or train one with `abaw train`")
            return path
        pointer = self.runs_dir / "LATEST"
        if not pointer.is_file():
            raise AbawError(f"no training run in {self.runs_dir} yet; run `abaw train` first")
        latest = pointer.read_text(errors="replace").strip()
        try:
            path = self.run_path(latest)
        except AbawError:
            raise AbawError(f"{pointer} holds '{latest[:80]}', which is not a run name; "
                            "pass --run NAME") from None
        if not path.is_dir():
            raise AbawError(f"{pointer} names run '{latest}', which does not exist; "
                            "pass --run NAME")
        return path

    def set_latest_run(self, name: str) -> None:
        atomic_write_text(self.runs_dir / "LATEST", check_run_name(name) + "\n")


@dataclass(frozen=True)
class SourceRecord:
    """Which release `prepare` read, kept in ``source.json`` so later commands find it again.

    ``prepare`` writes it (``write``); everything else reads it through
    ``Workspace.read_source``. The properties say what a demo release implies, so no caller asks
    "is this the demo?" itself; on any other release they are empty.
    """

    data_root: Path
    is_demo: bool = False
    source: str | None = None  # what the faces were made from: "crops" or "video"
    example_file: Path | None = None  # the release's example submission (test frames)
    test_list: Path | None = None  # the release's list of test videos

    @property
    def default_config(self) -> str | None:
        """The bundled config `abaw train` uses without ``--config`` (None: the ``--ssl`` one)."""
        return demo.DEMO_CONFIG if self.is_demo else None

    @property
    def unlabeled_sources(self) -> tuple[Path, ...]:
        """Unlabelled faces `prepare` ingests along with the release (the demo's own)."""
        return demo.unlabeled_sources(self.data_root) if self.is_demo else ()

    @property
    def test_labels_file(self) -> Path | None:
        """Hidden test labels a submission can be scored on (only the demo has them)."""
        return self.data_root / demo.TEST_LABELS_FILE if self.is_demo else None

    @property
    def unlabeled_labels_file(self) -> Path | None:
        """The true class of each unlabelled face (only the demo has them)."""
        return self.data_root / demo.UNLABELED_LABELS_FILE if self.is_demo else None

    def write(self, path: str | Path) -> None:
        """Write the record (atomically) in the JSON layout every version has used."""
        atomic_write_json(path, {
            "data_root": str(self.data_root), "is_demo": self.is_demo, "source": self.source,
            "example_file": str(self.example_file) if self.example_file else None,
            "test_list": str(self.test_list) if self.test_list else None,
        })

    @classmethod
    def read(cls, path: str | Path) -> SourceRecord | None:
        """The record in ``path``, or None when there is none (the workspace is not prepared).

        Anything else that keeps it from being a record (unreadable, not JSON, a missing
        ``data_root``, a field of the wrong type) is one error: the file and `abaw prepare`."""
        path = Path(path)
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _damaged_record(path, f"not readable JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise _damaged_record(path, "expected a JSON object")
        if not isinstance(raw.get("data_root"), str) or not raw["data_root"]:
            raise _damaged_record(path, "no data_root")
        if not isinstance(raw.get("is_demo", False), bool):
            raise _damaged_record(path, "is_demo is not true or false")
        for key in ("source", "example_file", "test_list"):
            if raw.get(key) is not None and not isinstance(raw[key], str):
                raise _damaged_record(path, f"{key} is not a string")
        return cls(data_root=Path(raw["data_root"]).expanduser().resolve(),
                   is_demo=raw.get("is_demo", False), source=raw.get("source"),
                   example_file=Path(raw["example_file"]) if raw.get("example_file") else None,
                   test_list=Path(raw["test_list"]) if raw.get("test_list") else None)


def _damaged_record(path: Path, problem: str) -> AbawError:
    return AbawError(f"{path} is damaged ({problem}); rerun `abaw prepare` to write it again")


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` only on success.

    A crash (or an exception) leaves ``target`` untouched and removes the temporary file. The
    file gets the permissions of a plain ``open`` (0666 less the umask), not mkstemp's 0600,
    so a workspace shared between users or nodes stays readable as the umask intends. The
    file is fsynced before the rename (and the folder after it, on POSIX): otherwise a node
    crash can leave the final name pointing at an empty file, e.g. a checkpoint.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp",
                                    dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_current_umask())
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, target)
        _fsync_folder(target.parent)
    except Exception as exc:
        if not isinstance(exc, OSError | AbawError) and _disk_full(target.parent):
            # torch.save and safetensors report a full disk as their own error types
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)) from exc
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def _fsync_file(path: Path) -> None:
    """Flush a written file's data to the disk (a read-only descriptor suffices on POSIX)."""
    fd = os.open(path, os.O_RDONLY if os.name == "posix" else os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; POSIX only, and skipped where the file system
    cannot fsync a folder (some network and FUSE mounts refuse it)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def _disk_full(folder: Path) -> bool:
    try:
        return shutil.disk_usage(folder).free < 16 * 1024 * 1024
    except OSError:
        return False


def _current_umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    return mask


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | Path, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_write_json(target: str | Path, obj: Any) -> None:
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def safe_join(root: Path, relative: str) -> Path:
    """``root / relative``, refusing anything (``..``, absolute, symlinks) that escapes root."""
    root = root.resolve()
    candidate = (root / relative).resolve()
    if candidate != root and root not in candidate.parents:
        raise AbawError(f"path '{relative}' would escape {root}; refused")
    return candidate
