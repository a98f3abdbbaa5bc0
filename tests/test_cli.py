"""The CLI contract: one-line errors with a non-zero exit, --json for scripts."""

from __future__ import annotations

import json
import subprocess
import sys

from fake_release import build_fake_release


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "abaw_kit", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


def test_bad_data_root_is_one_line_error_without_traceback(tmp_path):
    (tmp_path / "nothing").mkdir()
    proc = run_cli("prepare", "--data-root", str(tmp_path / "nothing"),
                   "--work", str(tmp_path / "work"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0] and "nothing" in lines[0]


def test_debug_shows_the_traceback(tmp_path):
    (tmp_path / "nothing").mkdir()
    proc = run_cli("prepare", "--data-root", str(tmp_path / "nothing"),
                   "--work", str(tmp_path / "work"), "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_prepare_json_output(tmp_path):
    root = build_fake_release(tmp_path / "release")
    proc = run_cli("prepare", "--data-root", str(root), "--work", str(tmp_path / "work"),
                   "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result["splits"]) == {"train", "val", "test"}
    assert result["splits"]["val"]["frames"] == 5


def test_ingest_into_the_source_creates_nothing(tmp_path):
    source = tmp_path / "faces"
    source.mkdir()
    (source / "a.jpg").write_bytes(b"x")
    proc = run_cli("ingest", str(source), "--work", str(source / "work"))
    assert proc.returncode == 2 and "lies inside the source" in proc.stderr
    assert not (source / "work").exists()
