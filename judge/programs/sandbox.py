"""Run LLM-written judging programs without trusting them.

A judging program (PAJAMA, "Program-As-a-Judge for Automated Model Assessment", Huang, Vishwakarma
and Sala, 2025) is a small Python module whose `judge(text, context)` answers one factual yes/no
sub-question about a chatbot response. An LLM writes it, so it is untrusted code, and it is held by
two layers because either alone has holes:

1. `check_program` parses the source and admits it only if every node type, name, attribute and
   import is on an allow-list: a program can slice strings, run regexes and do arithmetic, and
   nothing else. This layer is the one that tells the author, with a line number, why a program was
   refused.
2. `Sandbox` runs admitted programs in a separate `python -I -S` process (`_worker.py`) with an
   empty environment, restricted builtins, a capped address space, no file writes or new file
   descriptors, and a CPU budget per call, and the parent kills it after a wall-clock limit. A
   program that finds a hole in layer 1 can still only burn its own CPU and memory; a killed worker
   costs the call that killed it, and the next call gets a fresh worker.

Nothing a program returns is taken on trust either: only "yes", "no", "abstain", None or an
(answer, evidence) pair is an answer; anything else, like any exception or limit, is an error,
never a grade.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import importlib
import json
import math
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
import types
import weakref
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ALLOWED_ATTRIBUTES", "ALLOWED_BUILTINS", "ALLOWED_MODULES", "DEFAULT_LIMITS", "Outcome",
           "ProgramRejected", "Sandbox", "SandboxError", "SandboxLimits", "check_program"]

ENTRY = "judge"
MAX_SOURCE_CHARS = 20_000
MAX_NODES = 5_000
MAX_DEPTH = 100  # also keeps the worker's compile() and this module's recursion far from the C stack
MAX_CONSTANT_CHARS = 10_000
EVIDENCE_CHARS = 300
MAX_REPLY_BYTES = 1 << 20
_STARTUP_S = 10.0  # interpreter start on a loaded machine; program loads then get wall_s each

ALLOWED_MODULES = ("math", "re", "string")
ALLOWED_BUILTINS = frozenset({
    "abs", "all", "any", "bool", "chr", "dict", "divmod", "enumerate", "filter", "float", "frozenset",
    "int", "isinstance", "iter", "len", "list", "map", "max", "min", "next", "ord", "range", "reversed",
    "round", "set", "sorted", "str", "sum", "tuple", "zip",
    "ArithmeticError", "Exception", "IndexError", "KeyError", "LookupError", "TypeError", "ValueError",
    "ZeroDivisionError",
})
# Builtins that are not on the allow-list are refused by name even where a program would only shadow
# them, so that no reader has to work out which `type` a line means. `site` adds the last six.
_BUILTIN_NAMES = frozenset(dir(builtins)) | {"copyright", "credits", "exit", "help", "license", "quit"}

# str.format and format_map follow attribute paths inside the format string ("{0.__class__}"), so
# they reach what the attribute allow-list refuses. The re names are deprecated in 3.11 (template)
# or only print the compiled pattern (DEBUG).
_REFUSED_ATTRIBUTES = frozenset({"format", "format_map", "DEBUG", "T", "TEMPLATE", "template"})


def _module_members(module: types.ModuleType) -> frozenset[str]:
    """The public members a program may use. Submodules (re.enum, re.functools) and classes
    (string.Formatter, whose get_field walks attribute paths as str.format does) would be ladders
    to everything else; re.error is the one class a program needs, to catch a bad pattern."""
    members = set()
    for name in dir(module):
        value = getattr(module, name)
        if name.startswith("_") or name in _REFUSED_ATTRIBUTES or isinstance(value, types.ModuleType):
            continue
        if isinstance(value, type) and not (module.__name__ == "re" and name == "error"):
            continue
        members.add(name)
    return frozenset(members)


MODULE_MEMBERS: Mapping[str, frozenset[str]] = types.MappingProxyType(
    {name: _module_members(importlib.import_module(name)) for name in ALLOWED_MODULES})
ALLOWED_ATTRIBUTES = frozenset(
    name
    for owner in (str, list, dict, set, re.Pattern, re.Match)
    for name in dir(owner)
    if not name.startswith("_") and name not in _REFUSED_ATTRIBUTES
).union(*MODULE_MEMBERS.values())

_STATEMENTS: tuple[type[ast.AST], ...] = (
    ast.Assert, ast.Assign, ast.AnnAssign, ast.AugAssign, ast.Break, ast.Continue, ast.Delete, ast.Expr,
    ast.For, ast.FunctionDef, ast.If, ast.Import, ast.ImportFrom, ast.Pass, ast.Raise, ast.Return, ast.Try,
    ast.While,
)
_EXPRESSIONS: tuple[type[ast.AST], ...] = (
    ast.Attribute, ast.BinOp, ast.BoolOp, ast.Call, ast.Compare, ast.Constant, ast.Dict, ast.DictComp,
    ast.FormattedValue, ast.GeneratorExp, ast.IfExp, ast.JoinedStr, ast.Lambda, ast.List, ast.ListComp,
    ast.Name, ast.NamedExpr, ast.Set, ast.SetComp, ast.Slice, ast.Starred, ast.Subscript, ast.Tuple,
    ast.UnaryOp,
)
_PARTS: tuple[type[ast.AST], ...] = (
    ast.Module, ast.alias, ast.arg, ast.arguments, ast.boolop, ast.cmpop, ast.comprehension,
    ast.ExceptHandler, ast.expr_context, ast.keyword, ast.operator, ast.unaryop,
)
_ALLOWED_NODES = _STATEMENTS + _EXPRESSIONS + _PARTS
# What module-level values may contain: literals, names, attribute look-ups, operators and calls of
# allowed functions (re.compile(...), "|".join(TERMS)), but no loops, lambdas or conditionals.
_STATIC_NODES: tuple[type[ast.AST], ...] = (
    ast.Attribute, ast.BinOp, ast.Call, ast.Constant, ast.Dict, ast.FormattedValue, ast.JoinedStr,
    ast.List, ast.Name, ast.Set, ast.Slice, ast.Starred, ast.Subscript, ast.Tuple, ast.UnaryOp,
    ast.expr_context, ast.keyword, ast.operator, ast.unaryop,
)
_REFUSED_NODE_NAMES: Mapping[type[ast.AST], str] = {
    ast.AsyncFor: "async for", ast.AsyncFunctionDef: "async functions", ast.AsyncWith: "async with",
    ast.Await: "await", ast.ClassDef: "class definitions", ast.Global: "global statements",
    ast.Match: "match statements", ast.Nonlocal: "nonlocal statements", ast.TryStar: "except*",
    ast.With: "with statements", ast.Yield: "yield (generators)", ast.YieldFrom: "yield from",
}


class ProgramRejected(ValueError):
    """A program refused by `check_program`: `reason` says why, `line` where (None: the whole
    program), `program` which one when a `Sandbox` was given several."""

    def __init__(self, reason: str, line: int | None = None, program: str | None = None) -> None:
        where = "" if line is None else f"line {line}: "
        super().__init__(f"{'' if program is None else f'program {program!r}: '}{where}{reason}")
        self.reason = reason
        self.line = line
        self.program = program


class SandboxError(RuntimeError):
    """The sandbox itself cannot run (its worker does not start): not a verdict about any program."""


def _refuse(node: ast.AST | None, reason: str) -> ProgramRejected:
    return ProgramRejected(reason, getattr(node, "lineno", None))


def check_program(source: str, entry: str = ENTRY) -> ast.Module:
    """Parse `source` and return its tree if it passes the allow-list; raise ProgramRejected if not."""
    if not isinstance(source, str):
        raise TypeError(f"a program's source must be a str, not {type(source).__name__}")
    if len(source) > MAX_SOURCE_CHARS:
        raise ProgramRejected(f"the program is {len(source):,} characters; the limit is {MAX_SOURCE_CHARS:,}")
    try:
        tree = ast.parse(source, filename="<program>")
    except SyntaxError as exc:
        raise ProgramRejected(f"syntax error: {exc.msg}", exc.lineno) from None
    except (ValueError, RecursionError, MemoryError) as exc:  # null bytes, pathological nesting
        raise ProgramRejected(f"cannot parse: {exc}") from None
    _check_size(tree)
    top_level = {id(stmt) for stmt in tree.body}
    _check_module(tree, entry, top_level)
    for node in ast.walk(tree):
        _check_node(node, top_level)
    return tree


def _check_size(tree: ast.Module) -> None:
    """Node count and depth, walked without recursion so a deep tree cannot overflow this check."""
    count = 0
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise ProgramRejected(f"the program has more than {MAX_NODES:,} syntax nodes")
        if depth > MAX_DEPTH:
            raise _refuse(node, f"the program nests deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in ast.iter_child_nodes(node))


def _check_name(name: str, node: ast.AST) -> None:
    if name.startswith("_"):
        raise _refuse(node, f"name {name!r} is not allowed: names starting with '_' are reserved")
    if name in _BUILTIN_NAMES and name not in ALLOWED_BUILTINS:
        raise _refuse(node, f"builtin {name!r} is not allowed (rename it if it is your own variable)")


def _check_node(node: ast.AST, top_level: set[int]) -> None:
    if not isinstance(node, _ALLOWED_NODES):
        what = _REFUSED_NODE_NAMES.get(type(node), type(node).__name__)
        raise _refuse(node, f"{what} not allowed")
    if isinstance(node, ast.Name):
        _check_name(node.id, node)
    elif isinstance(node, ast.arg):
        _check_name(node.arg, node)
    elif isinstance(node, ast.FunctionDef):
        _check_name(node.name, node)
        if node.decorator_list:
            raise _refuse(node, "decorators are not allowed")
    elif isinstance(node, ast.ExceptHandler) and node.name is not None:
        _check_name(node.name, node)
    elif isinstance(node, ast.keyword) and node.arg is not None and node.arg.startswith("_"):
        raise _refuse(node, f"keyword {node.arg!r} is not allowed: names starting with '_' are reserved")
    elif isinstance(node, ast.Attribute):
        if node.attr not in ALLOWED_ATTRIBUTES:
            raise _refuse(node, f"attribute {node.attr!r} is not allowed")
        if not isinstance(node.ctx, ast.Load):
            raise _refuse(node, f"assigning or deleting attribute {node.attr!r} is not allowed")
    elif isinstance(node, ast.Constant):
        if isinstance(node.value, str | bytes) and len(node.value) > MAX_CONSTANT_CHARS:
            raise _refuse(node, f"a constant longer than {MAX_CONSTANT_CHARS:,} characters is not allowed")
    elif isinstance(node, ast.comprehension) and node.is_async:
        raise _refuse(node, "async comprehensions are not allowed")
    elif isinstance(node, ast.Import | ast.ImportFrom):
        _check_import(node)
        if id(node) not in top_level:
            raise _refuse(node, "imports are only allowed at the top level of the program")


def _check_import(node: ast.Import | ast.ImportFrom) -> None:
    allowed = ", ".join(ALLOWED_MODULES)
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name not in ALLOWED_MODULES:
                raise _refuse(node, f"import of {alias.name!r} is not allowed (only {allowed})")
            _check_name(alias.asname or alias.name, node)
        return
    names = [alias.name for alias in node.names]
    # Harmless and common in generated code: it only stops annotations from being evaluated.
    if node.module == "__future__" and node.level == 0 and names == ["annotations"]:
        return
    if node.level != 0 or node.module not in ALLOWED_MODULES:
        module = "." * node.level + (node.module or "")
        raise _refuse(node, f"import from {module!r} is not allowed (only {allowed})")
    for alias in node.names:
        if alias.name == "*":
            raise _refuse(node, "star imports are not allowed")
        if alias.name not in MODULE_MEMBERS[node.module]:
            raise _refuse(node, f"{node.module}.{alias.name} is not allowed")
        _check_name(alias.asname or alias.name, node)


def _check_static(expr: ast.expr) -> None:
    """Module-level values run once when the program loads: constants, not computations."""
    for node in ast.walk(expr):
        if not isinstance(node, _STATIC_NODES):
            raise _refuse(node, "module-level values may only be constants, containers of constants and "
                                "calls such as re.compile(...)")
        if isinstance(node, ast.Call) and not (
                isinstance(node.func, ast.Attribute)
                or (isinstance(node.func, ast.Name) and node.func.id in ALLOWED_BUILTINS)):
            raise _refuse(node, "module-level code may not call the program's own functions")


def _bound_names(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, ast.Tuple | ast.List):
        return [name for element in target.elts for name in _bound_names(element)]
    raise _refuse(target, "module-level assignments may only bind names")


def _check_module(tree: ast.Module, entry: str, top_level: set[int]) -> None:
    """The shape of the module: what may stand at the top level, and the entry point."""
    entries = 0
    for stmt in tree.body:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            bound = [alias.asname or alias.name for alias in stmt.names]
        elif isinstance(stmt, ast.FunctionDef):
            # Defaults and annotations are evaluated when the module loads.
            arguments = stmt.args
            for value in [*arguments.defaults, *(d for d in arguments.kw_defaults if d is not None)]:
                _check_static(value)
            for argument in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs,
                             arguments.vararg, arguments.kwarg]:
                if argument is not None and argument.annotation is not None:
                    _check_static(argument.annotation)
            if stmt.returns is not None:
                _check_static(stmt.returns)
            bound = [] if stmt.name == entry else [stmt.name]
            if stmt.name == entry:
                entries += 1
                if (len(arguments.posonlyargs) + len(arguments.args) != 2 or arguments.vararg
                        or arguments.kwonlyargs or arguments.kwarg):
                    raise _refuse(stmt, f"{entry} must take exactly two positional parameters (text, context)")
        elif isinstance(stmt, ast.Assign | ast.AnnAssign):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            bound = [name for target in targets for name in _bound_names(target)]
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            bound = []  # a docstring
        else:
            _check_node(stmt, top_level)  # the specific reason for a class, async def, with...
            raise _refuse(stmt, "module-level code may only be imports, constant assignments and "
                                "function definitions")
        if entry in bound:
            raise _refuse(stmt, f"{entry!r} must be bound only by its def")
        if isinstance(stmt, ast.Assign | ast.AnnAssign) and stmt.value is not None:
            _check_static(stmt.value)
        if isinstance(stmt, ast.AnnAssign):
            _check_static(stmt.annotation)
    if entries != 1:
        raise ProgramRejected(f"the program must define {entry}(text, context) exactly once (found {entries})")


@dataclass(frozen=True)
class SandboxLimits:
    """Limits per program call. The CPU limit is exact to the timer tick; wall_s is the parent's
    backstop for anything that does not burn CPU."""

    cpu_s: float = 1.0
    memory_mb: int = 256  # address space of the whole worker; the interpreter itself takes about 15 MB
    wall_s: float = 3.0

    def __post_init__(self) -> None:
        if not (self.cpu_s > 0 and math.isfinite(self.cpu_s)):
            raise ValueError(f"cpu_s must be a positive number of seconds, not {self.cpu_s!r}")
        if not (self.wall_s > 0 and math.isfinite(self.wall_s)):
            raise ValueError(f"wall_s must be a positive number of seconds, not {self.wall_s!r}")
        if isinstance(self.memory_mb, bool) or not isinstance(self.memory_mb, int) or self.memory_mb < 32:
            raise ValueError(f"memory_mb must be an integer of at least 32, not {self.memory_mb!r}")


DEFAULT_LIMITS = SandboxLimits()


@dataclass(frozen=True)
class Outcome:
    """One program's answer on one text: "yes", "no" or None (abstained, or failed: see error).
    `evidence` is what the program quoted (up to 300 characters), not checked against the text.
    An outcome with an error is never an answer: its answer is always None."""

    answer: str | None
    evidence: str = ""
    error: str | None = None


class _WorkerGone(Exception):
    """The worker can no longer answer; `error` is what the call in progress gets."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


def _reap(proc: subprocess.Popen[bytes]) -> None:
    # The worker leads its own process group, so this also ends anything it might have started.
    # Only while it is unreaped: a reaped pid (and its group id) may already belong to someone else.
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


class _Worker:
    """One worker process and the pipes to it. Reads never block past a deadline: the reply pipe is
    polled, so a worker that stops answering is killed on time whatever it is doing."""

    def __init__(self, setup: bytes) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(Path(__file__).with_name("_worker.py"))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            # No provider keys or other secrets in the process that runs untrusted code.
            env={}, cwd="/", start_new_session=True, close_fds=True)
        self._reaper = weakref.finalize(self, _reap, self.proc)
        assert self.proc.stdin is not None and self.proc.stdout is not None and self.proc.stderr is not None
        self._in, self._out, self._err = self.proc.stdin.fileno(), self.proc.stdout.fileno(), self.proc.stderr.fileno()
        for fd in (self._in, self._out, self._err):
            os.set_blocking(fd, False)
        self._poll = select.poll()
        self._poll.register(self._out, select.POLLIN)
        self._poll.register(self._err, select.POLLIN)
        self._writable = select.poll()  # poll, not select: a busy parent may hold fds past FD_SETSIZE
        self._writable.register(self._in, select.POLLOUT)
        self._lines: deque[bytearray] = deque()
        self._partial = bytearray()
        self._stderr = bytearray()
        self._err_open = True
        self._killed = False
        self.send(setup, time.monotonic() + _STARTUP_S)

    def send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._in, view):]
                continue
            except BlockingIOError:
                pass
            except BrokenPipeError:
                raise self._gone() from None
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise self._gone(timed_out=True)
            self._writable.poll(math.ceil(timeout * 1000))

    def read(self, deadline: float) -> Any:
        """The next message, decoded."""
        while not self._lines:
            timeout = deadline - time.monotonic()
            if timeout <= 0:
                raise self._gone(timed_out=True)
            for fd, _ in self._poll.poll(math.ceil(timeout * 1000)):
                data = os.read(fd, 1 << 16)
                if fd == self._err:
                    self._keep_stderr(data)
                elif not data:
                    raise self._gone()
                else:
                    self._partial += data
                    if b"\n" in data:
                        *lines, self._partial = self._partial.split(b"\n")
                        self._lines.extend(lines)
                    if len(self._partial) > MAX_REPLY_BYTES:
                        self.kill()
                        raise _WorkerGone(f"reply larger than {MAX_REPLY_BYTES:,} bytes")
        line = self._lines.popleft()
        try:
            return json.loads(line)
        except ValueError:
            self.kill()
            raise _WorkerGone(f"unreadable reply from the worker: {bytes(line[:100])!r}") from None

    def _keep_stderr(self, data: bytes) -> None:
        if not data:
            self._err_open = False
            self._poll.unregister(self._err)
        else:
            # Only the tail matters (a traceback's last line); the worker cannot fill memory here.
            self._stderr = (self._stderr + data)[-4096:]

    def kill(self) -> None:
        self._killed = True
        self._reaper()

    def disown(self) -> None:
        """In a forked child: forget the parent's worker without touching it (closing inherited
        copies of the pipes leaves the parent's open)."""
        self._reaper.detach()
        self._killed = True
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def _gone(self, timed_out: bool = False) -> _WorkerGone:
        """Kill the worker (if it is not dead already) and say why it stopped."""
        if timed_out:
            self.kill()
            return _WorkerGone("wall-clock limit")
        try:
            returncode = self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:  # closed its output but kept running
            self.kill()
            return _WorkerGone("the worker stopped answering")
        with contextlib.suppress(OSError):
            self._poll.unregister(self._out)
            while self._err_open and self._poll.poll(100):
                self._keep_stderr(os.read(self._err, 1 << 16))  # the rest of it, now that it has exited
        self.kill()
        return _WorkerGone(_death_reason(returncode, bytes(self._stderr)))

    def close(self) -> None:
        """Let the worker exit on end of input, then make sure it has."""
        if self._killed:
            return
        assert self.proc.stdin is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=1.0)
        self.kill()


def _death_reason(returncode: int, stderr: bytes) -> str:
    if returncode in (-signal.SIGXCPU, -signal.SIGPROF):
        return "cpu limit"
    if b"MemoryError" in stderr or b"Cannot allocate memory" in stderr or b"out of memory" in stderr:
        return "memory limit"
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"worker killed by {signal.Signals(-returncode).name}"
        return f"worker killed by signal {-returncode}"
    last = stderr.decode("utf-8", "replace").strip().splitlines()[-1:]
    return f"worker exited with status {returncode}" + (f": {last[0][:200]}" if last else "")


def _describe(value: Any) -> str:
    if isinstance(value, dict) and "type" in value:  # the worker's stand-in for a non-JSON value
        return str(value["type"]) + (f" {value['repr']}" if "repr" in value else "")
    return repr(value)[:100]


def _outcome(value: Any, error: Any) -> Outcome:
    """Validate what the worker relayed. Only exact answers count: anything else is an error."""
    if error is not None:
        return Outcome(None, error=str(error)[:500])
    answer, evidence = value, ""
    if isinstance(value, list):
        if len(value) != 2 or not isinstance(value[1], str):
            return Outcome(None, error=f"bad return value: {_describe(value)} (a pair must be (answer, evidence str))")
        answer, evidence = value[0], value[1][:EVIDENCE_CHARS]
    if answer in ("yes", "no"):
        return Outcome(answer, evidence)
    if answer is None or answer == "abstain":
        return Outcome(None, evidence)
    return Outcome(None, error=f"bad return value: {_describe(answer)} (expected 'yes', 'no', 'abstain' or None)")


class Sandbox:
    """Judging programs loaded into one worker process, run under `limits`. Not for concurrent
    use from several threads at once (calls are serialised by a lock)."""

    def __init__(self, programs: Mapping[str, str], limits: SandboxLimits = DEFAULT_LIMITS) -> None:
        if not programs:
            raise ValueError("a sandbox needs at least one program")
        for name, source in programs.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"program names must be non-empty strings, not {name!r}")
            try:
                check_program(source)
            except ProgramRejected as exc:
                raise ProgramRejected(exc.reason, exc.line, program=name) from None
        self._names = tuple(programs)
        self._sources = [programs[name] for name in self._names]
        self._index = {name: i for i, name in enumerate(self._names)}
        self._limits = limits
        self._load_errors: dict[int, str] = {}
        self._worker: _Worker | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._owner = os.getpid()
        self._workers_started = 0
        with self._lock:
            self._ensure_worker()  # a worker that cannot start at all is a SandboxError now, not later

    @property
    def names(self) -> tuple[str, ...]:
        return self._names

    @property
    def workers_started(self) -> int:
        """Worker processes started so far: one, plus one for every call or load that killed one."""
        return self._workers_started

    @property
    def worker_pid(self) -> int | None:
        return None if self._worker is None else self._worker.proc.pid

    def load_error(self, name: str) -> str | None:
        """Why program `name` could not be loaded in the worker (every call then reports it), or None."""
        return self._load_errors.get(self._program_index(name))

    def run(self, name: str, text: str, context: Mapping[str, Any]) -> Outcome:
        index = self._program_index(name)
        payload = self._payload(text, context)
        with self._lock:
            return self._run_item(text, payload, [index])[index]

    def run_many(self, items: Sequence[tuple[str, Mapping[str, Any]]]) -> list[dict[str, Outcome]]:
        """Every program on every (text, context) item; one request line per item."""
        everything = list(range(len(self._names)))
        payloads = [(text, self._payload(text, context)) for text, context in items]
        results = []
        with self._lock:
            for text, payload in payloads:
                by_index = self._run_item(text, payload, everything)
                results.append({name: by_index[i] for i, name in enumerate(self._names)})
        return results

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._adopt()
            if self._worker is not None:
                self._worker.close()
                self._worker = None

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _program_index(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"no program named {name!r}; the sandbox has {', '.join(self._names)}") from None

    @staticmethod
    def _payload(text: str, context: Mapping[str, Any]) -> str:
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, not {type(text).__name__}")
        # Sent as a JSON string so that the worker can decode a fresh copy for every program:
        # one program mutating its context cannot change what the next one reads.
        return json.dumps(dict(context), allow_nan=False)

    def _adopt(self) -> None:
        """After a fork (judge.workers forks its shards) the inherited worker and its pipes still
        serve the parent: the child leaves them alone and starts its own."""
        if self._owner != os.getpid():
            if self._worker is not None:
                self._worker.disown()
                self._worker = None
            self._owner = os.getpid()

    def _setup(self) -> bytes:
        sources = [None if i in self._load_errors else source for i, source in enumerate(self._sources)]
        setup = {
            "programs": sources, "entry": ENTRY,
            "builtins": sorted(ALLOWED_BUILTINS),
            "modules": {name: sorted(members) for name, members in MODULE_MEMBERS.items()},
            "memory_mb": self._limits.memory_mb, "cpu_s": self._limits.cpu_s, "evidence_chars": EVIDENCE_CHARS,
        }
        return json.dumps(setup).encode() + b"\n"

    def _ensure_worker(self) -> _Worker:
        """The running worker, or a fresh one with every loadable program loaded. A program whose
        load kills the worker is left out of the next start, so this ends after at most one start
        per program."""
        if self._closed:
            raise RuntimeError("the sandbox is closed")
        self._adopt()
        while self._worker is None:
            try:
                worker = _Worker(self._setup())
                self._workers_started += 1
                if worker.read(time.monotonic() + _STARTUP_S) != ["H"]:
                    raise _WorkerGone("the worker did not greet")
            except (_WorkerGone, OSError) as exc:
                reason = exc.error if isinstance(exc, _WorkerGone) else str(exc)
                raise SandboxError(f"the sandbox worker did not start: {reason}") from None
            index = -1
            try:
                for index in (i for i in range(len(self._sources)) if i not in self._load_errors):
                    message = worker.read(time.monotonic() + self._limits.wall_s)
                    if not (isinstance(message, list) and message[:2] == ["L", index] and len(message) == 3):
                        worker.kill()
                        raise SandboxError(f"the sandbox worker broke protocol while loading: {message!r:.200}")
                    if message[2] is not None:
                        self._load_errors[index] = f"load failed: {message[2]}"
            except _WorkerGone as gone:
                self._load_errors[index] = f"load failed: {gone.error}"
                continue
            self._worker = worker
        return self._worker

    def _run_item(self, text: str, payload: str, indices: list[int]) -> dict[int, Outcome]:
        results = {i: Outcome(None, error=self._load_errors[i]) for i in indices if i in self._load_errors}
        todo = [i for i in indices if i not in self._load_errors]
        done = 0
        while done < len(todo):
            worker = self._ensure_worker()
            request = json.dumps([text, payload, todo[done:]]).encode() + b"\n"
            try:
                worker.send(request, time.monotonic() + self._limits.wall_s)
                while done < len(todo):
                    # The worker answers each call as it finishes, so the wall clock is per call and
                    # a death is charged to the call in progress alone.
                    message = worker.read(time.monotonic() + self._limits.wall_s)
                    if not (isinstance(message, list) and len(message) == 3 and message[0] == todo[done]):
                        worker.kill()
                        raise _WorkerGone(f"the worker broke protocol: {message!r:.200}")
                    results[todo[done]] = _outcome(message[1], message[2])
                    done += 1
            except _WorkerGone as gone:
                self._worker = None
                results[todo[done]] = Outcome(None, error=gone.error)
                done += 1
        return results
