"""Atomic outputs get the mode any other new file or folder gets (issue 27: a report run's
folder was 0700, a temp folder renamed, so a web server or a teammate could not read it)."""

from __future__ import annotations

import os
import stat

import pytest

from midigen.atomic import atomic_dir, atomic_file


@pytest.mark.parametrize(
    ("umask", "folder", "file"), [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)]
)
def test_outputs_get_the_umasks_mode(tmp_path, umask, folder, file):
    before = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "run") as tmp:
            (tmp / "page.html").write_text("<p>")
        with atomic_file(tmp_path / "run.json") as f:
            f.write("{}")
    finally:
        os.umask(before)
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == folder
    assert stat.S_IMODE((tmp_path / "run.json").stat().st_mode) == file
    assert (tmp_path / "run" / "page.html").read_text() == "<p>"
