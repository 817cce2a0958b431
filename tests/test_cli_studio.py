"""`psyjudge studio` as a user starts it: it refuses a folder with no rubrics, copies the built-ins on
request, listens on loopback and prints its address, and warns (and requires a token) elsewhere."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from typer.testing import CliRunner

from judge.cli import app
from judge.privacy import is_loopback_host as is_loopback


def test_a_folder_without_rubrics_is_refused_with_the_fix(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["studio", "--rubrics", str(tmp_path / "none")])
    assert result.exit_code == 2
    assert "no rubric folders" in result.output and "--copy-builtins" in result.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("x", encoding="utf-8")
    result = CliRunner().invoke(app, ["studio", "--rubrics", str(tmp_path / "full"), "--copy-builtins"])
    assert result.exit_code == 2 and "not empty" in result.output


def test_loopback_names() -> None:
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.4", "example.org", "::"))


@contextmanager
def _studio(*args: str) -> Iterator[tuple[str, list[str]]]:
    """Start the real command; yield the address it prints and everything it said before that."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "judge", "studio", "--port", "0", "--tiers", "rules", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    said: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        url = None
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            said.append(line)
            found = re.search(r"open (http://\S+)", line)
            url = found.group(1) if found else None
        assert url is not None, "".join(said)
        yield url, said
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_command_copies_the_builtins_and_serves_on_loopback(tmp_path: Path) -> None:
    folder = tmp_path / "my_rubrics"
    with _studio("--rubrics", str(folder), "--copy-builtins") as (url, said):
        assert url.startswith("http://127.0.0.1:") and "token" not in url
        assert any("copied the built-in rubrics" in line for line in said)
        page = httpx.get(url, timeout=10)
        assert page.status_code == 200 and "self_harm" in page.text
    assert (folder / "self_harm" / "rubric.yaml").is_file() and (folder / "_shared").is_dir()


def test_listening_beyond_loopback_warns_and_requires_a_token(tmp_path: Path) -> None:
    folder = tmp_path / "shared_rubrics"
    with _studio("--rubrics", str(folder), "--copy-builtins", "--host", "0.0.0.0") as (url, said):
        assert any("warning: listening on 0.0.0.0" in line for line in said)
        token = re.search(r"\?token=(\S+)", url)
        assert token is not None
        local = url.replace("0.0.0.0", "127.0.0.1").split("?", 1)[0]
        assert httpx.get(local, timeout=10).status_code == 401
        with httpx.Client(timeout=10, follow_redirects=True) as client:
            assert client.get(f"{local}?token={token.group(1)}").status_code == 200
            assert client.get(f"{local}rubrics/self_harm").status_code == 200
