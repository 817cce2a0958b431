"""The sandbox worker: runs judging programs for `judge.programs.sandbox.Sandbox`.

Started as `python -I -S _worker.py` (no site, no user paths, no environment), it imports only the
standard library, never `judge`: the parent sends everything it needs. It speaks JSON lines:

    parent -> worker, once:  {"programs": [source | null, ...], "entry", "builtins", "modules",
                              "memory_mb", "cpu_s", "evidence_chars"}
    worker -> parent:        ["H"] once its limits are in place, then ["L", i, error | null] per program
    parent -> worker:        [text, context_json, [program indices]] per item
    worker -> parent:        [i, value, error | null] per call, as each call finishes

The parent has already checked the programs against its allow-list; this process is the second
layer, which assumes that check has holes. Before any program runs it caps the address space, file
size, core dumps, processes and file descriptors, gives up root if it has it, and it arms a CPU
timer around every program call whose default action kills the process: nothing a program does in
Python or C can catch it.
"""

from __future__ import annotations

import json
import math
import os
import re
import resource
import signal
import string
import sys
import types
from collections.abc import Callable
from typing import Any

# The CPU hard limit stays where it was: the soft limit is moved per call, and an unprivileged
# process could not raise a hard limit again once lowered.
_CPU_HARD = resource.getrlimit(resource.RLIMIT_CPU)[1]


def _write(fd: int, message: Any) -> None:
    data = memoryview((json.dumps(message) + "\n").encode("ascii"))
    while data:
        data = data[os.write(fd, data):]


def _protect_stdout() -> int:
    """Move the protocol to a private descriptor and point fd 1 at /dev/null, so nothing a program
    makes the runtime print (re.DEBUG output, say) can be read as a reply."""
    out = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    return out


def _apply_limits(memory_mb: int, highest_fd: int) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # every file write fails (Python ignores SIGXFSZ)
    # No new processes. The kernel does not apply RLIMIT_NPROC to root (or CAP_SYS_RESOURCE): a
    # worker started as root is bound by it only after _drop_root, and where that fails it stays a
    # no-op, which is tolerable because the programs have no way to reach fork.
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (0, 0))
    except (ValueError, OSError):
        pass
    # No new file descriptors: open() and sockets fail even if a program reaches them.
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest_fd + 1, highest_fd + 1))
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


_NOBODY = 65534


def _drop_root() -> None:
    """Started as root, become nobody: RLIMIT_NPROC then applies (no fork), and a program that got
    past both checks owns no files and can signal only processes that nobody owns.
    Best effort: where uid 65534 is not mapped (some user namespaces) the worker stays as it is,
    still under every other limit."""
    if os.geteuid() != 0:
        return
    try:
        os.setgroups([])
        os.setgid(_NOBODY)
        os.setuid(_NOBODY)
    except OSError:
        pass


def _arm(cpu_s: float) -> None:
    """Kill this process once the coming call has used cpu_s of CPU. ITIMER_PROF's SIGPROF (default
    action: terminate) is exact to the tick; RLIMIT_CPU's SIGXCPU, in whole seconds, backs it up."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    resource.setrlimit(resource.RLIMIT_CPU, (math.ceil(usage.ru_utime + usage.ru_stime + cpu_s), _CPU_HARD))
    signal.setitimer(signal.ITIMER_PROF, cpu_s)


def _disarm() -> None:
    signal.setitimer(signal.ITIMER_PROF, 0)
    # Lift the soft limit again so that the worker's own work between calls (decoding a long
    # request) is never charged to a call that has already ended.
    resource.setrlimit(resource.RLIMIT_CPU, (_CPU_HARD, _CPU_HARD))


def _error(exc: BaseException) -> str:
    if isinstance(exc, MemoryError):
        return "memory limit"
    try:
        message = str(exc)[:200]
    except Exception:  # a message too large to render
        message = "(message not shown)"
    return f"raised {type(exc).__name__}: {message}" if message else f"raised {type(exc).__name__}"


def _wire(value: object, evidence_chars: int, top: bool = True) -> Any:
    """What the parent needs to validate a return value, bounded in size. Only str, None and a
    short list/tuple travel as themselves; anything else travels as its type's name."""
    if value is None:
        return None
    # Exact types, not isinstance: what travels must be the plain built-in, whatever it claims.
    if type(value) is str:
        return value[:evidence_chars]
    if top and (type(value) is tuple or type(value) is list) and len(value) <= 3:
        return [_wire(element, evidence_chars, top=False) for element in value]
    stand_in: dict[str, str] = {"type": type(value).__name__}
    if type(value) is bool or type(value) is float or (type(value) is int and value.bit_length() < 64):
        stand_in["repr"] = repr(value)
    return stand_in


def _namespaces(modules: dict[str, list[str]]) -> dict[str, Any]:
    """Stand-ins for the allowed modules holding only their allowed members, so that a hole in the
    attribute check still finds no re.enum, re.functools or string.Formatter to climb."""
    real = {"math": math, "re": re, "string": string}
    spaces: dict[str, Any] = {
        name: types.SimpleNamespace(**{member: getattr(real[name], member) for member in members})
        for name, members in modules.items()
    }
    # `from __future__ import annotations` still runs an import when the module loads; the
    # statement's effect is on compilation, so the bound value does not matter.
    spaces["__future__"] = types.SimpleNamespace(annotations=None)
    return spaces


def _safe_builtins(names: list[str], modules: dict[str, Any]) -> dict[str, Any]:
    import builtins

    def guarded_import(name: str, globals: object = None, locals: object = None,
                       fromlist: object = (), level: int = 0) -> Any:
        if level == 0 and name in modules:
            return modules[name]
        raise ImportError(f"import of {name!r} is not allowed")

    allowed: dict[str, Any] = {name: getattr(builtins, name) for name in names
                               if not name.startswith("_") and hasattr(builtins, name)}
    allowed["__import__"] = guarded_import
    return allowed


def _load(index: int, source: str, entry: str, safe: dict[str, Any],
          cpu_s: float) -> tuple[Callable[..., Any] | None, str | None]:
    namespace: dict[str, Any] = {"__builtins__": safe, "__name__": f"program_{index}"}
    _arm(cpu_s)
    try:
        exec(compile(source, f"<program {index}>", "exec", dont_inherit=True), namespace)
    except Exception as exc:
        return None, _error(exc)
    finally:
        _disarm()
    function = namespace.get(entry)
    if not callable(function):
        return None, f"the program defines no function {entry!r}"
    return function, None


def _call(function: Callable[..., Any], text: str, context_json: str, cpu_s: float,
          evidence_chars: int) -> tuple[Any, str | None]:
    try:
        context = json.loads(context_json)  # a fresh copy per call: programs may mutate it
        _arm(cpu_s)
        try:
            value = function(text, context)
        finally:
            _disarm()
        return _wire(value, evidence_chars), None
    except Exception as exc:  # MemoryError included: the call fails, the worker carries on
        return None, _error(exc)


def main() -> int:
    out = _protect_stdout()
    requests = sys.stdin.buffer
    setup = json.loads(requests.readline())
    entry: str = setup["entry"]
    cpu_s: float = setup["cpu_s"]
    evidence_chars: int = setup["evidence_chars"]
    safe = _safe_builtins(setup["builtins"], _namespaces(setup["modules"]))
    _apply_limits(setup["memory_mb"], highest_fd=max(out, 2))
    _drop_root()
    _write(out, ["H"])

    functions: list[Callable[..., Any] | None] = []
    for index, source in enumerate(setup["programs"]):
        function = None
        if source is not None:  # None: left out by the parent after it killed an earlier worker
            function, error = _load(index, source, entry, safe, cpu_s)
            _write(out, ["L", index, error])
        functions.append(function)

    while line := requests.readline():
        text, context_json, indices = json.loads(line)
        for index in indices:
            function = functions[index]
            if function is None:
                _write(out, [index, None, "program not loaded"])
                continue
            value, error = _call(function, text, context_json, cpu_s, evidence_chars)
            _write(out, [index, value, error])
    return 0


if __name__ == "__main__":
    sys.exit(main())
