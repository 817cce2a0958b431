"""The studio's web app: FastAPI routes over server-rendered pages and a little plain JavaScript.

Pages: the rubric list, the editor (forms, live lint, the rendered judge prompt, the test run with
its regression diff, save), a rubric's history, and one saved version (with its diff to the
current file and a restore button). The rubric files are read and written only through
judge.studio.store, which refuses any path outside the rubrics folder; the page templates and the
rubric's own templates are rendered only in Jinja's sandbox.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2.sandbox import SandboxedEnvironment
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from judge.rubrics import Rubric, RubricError, check_examples, example_records, load_rubric_folder
from judge.studio.drafts import ANSWERS, LABELS, ROLES, Draft, Problem, apply_form, check_text
from judge.studio.security import CSRF_FIELD, LOOPBACK_HOSTS, Guard, guard_middleware, session_of
from judge.studio.store import RubricStore, StoreError
from judge.studio.testrun import CaseRunner
from judge.studio.yamledit import plain
from judge.studio.yamlrt import YamlTextError, load_rt

HERE = Path(__file__).parent
MAX_FIELDS = 50_000
"""A rubric with many examples posts thousands of fields (an answer per question per example)."""
MAX_SAMPLE = 200


@dataclass
class StudioSettings:
    store: RubricStore
    runner: CaseRunner
    token: str | None = None
    loopback: bool = True
    judge_description: str = "none"


def _templates() -> SandboxedEnvironment:
    env = SandboxedEnvironment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                               autoescape=True, undefined=jinja2.StrictUndefined,
                               trim_blocks=True, lstrip_blocks=True)
    return env


def create_app(settings: StudioSettings) -> FastAPI:
    app = FastAPI(title="psyjudge studio", docs_url=None, redoc_url=None, openapi_url=None)
    guard = Guard(settings.token)
    env = _templates()
    store = settings.store

    app.middleware("http")(guard_middleware(guard))
    if settings.loopback:
        # DNS rebinding: a page on another site that resolves its own name to 127.0.0.1 reaches a
        # loopback server with its own Host header; only loopback names are answered.
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=[h.strip("[]") for h in LOOPBACK_HOSTS])
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def page(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        session = session_of(request)
        html = env.get_template(name).render(csrf=guard.csrf_for(session), csrf_field=CSRF_FIELD,
                                             root=str(store.root), judge=settings.judge_description,
                                             tiers=settings.runner.tiers, **context)
        return HTMLResponse(html, status_code=status)

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> Response:
        if request.method == "GET":
            return page(request, "error.html.j2", status=exc.status, message=exc.message)
        return JSONResponse({"ok": False, "error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = "No such page." if exc.status_code == 404 else str(exc.detail)
        if request.method == "GET":
            return page(request, "error.html.j2", status=exc.status_code, message=message)
        return JSONResponse({"ok": False, "error": message}, status_code=exc.status_code)

    async def form_of(request: Request) -> FormData:
        return await request.form(max_fields=MAX_FIELDS)

    def fields(form: FormData) -> dict[str, str]:
        return {k: v for k, v in form.items() if isinstance(v, str)}

    def draft_from(rubric_id: str, form: FormData) -> tuple[Draft, str, str]:
        text, sha = store.read(rubric_id)
        return apply_form(store.folder(rubric_id), text, fields(form)), text, sha

    # --- pages ------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    async def rubric_list(request: Request) -> HTMLResponse:
        rows = []
        for rubric_id in store.ids():
            try:
                rubric = load_rubric_folder(store.folder(rubric_id))
                failing = sum(not o.passed for o in check_examples(rubric))
                rows.append({"id": rubric_id, "ok": True, "title": rubric.spec.title, "version": rubric.version,
                             "owner": rubric.spec.owner, "questions": len(rubric.spec.sub_questions),
                             "examples": len(rubric.spec.examples), "failing": failing,
                             "note": rubric.spec.change_note})
            except RubricError as exc:
                rows.append({"id": rubric_id, "ok": False, "error": str(exc)})
        return page(request, "list.html.j2", rows=rows)

    @app.get("/rubrics/{rubric_id}", response_class=HTMLResponse)
    async def editor(request: Request, rubric_id: str, saved: str | None = None) -> HTMLResponse:
        text, sha = store.read(rubric_id)
        folder = store.folder(rubric_id)
        try:
            doc = plain(load_rt(text))
        except YamlTextError as exc:
            return page(request, "error.html.j2", status=422,
                        message=f"{folder / 'rubric.yaml'} cannot be edited here until it is valid YAML: {exc}")
        rubric, problems = check_text(folder, text)
        own = {str(q.get("id")) for q in doc.get("sub_questions") or [] if isinstance(q, dict) and q.get("id")}
        shared = [q for q in rubric.spec.sub_questions if q.id not in own] if rubric else []
        questions = rubric.question_ids if rubric else sorted(own)
        history = store.history(rubric_id)
        return page(request, "editor.html.j2", rubric_id=rubric_id, doc=doc, sha=sha, problems=problems,
                    rubric=rubric, shared=shared, questions=questions, labels=LABELS, answers=ANSWERS,
                    roles=ROLES, lexicon_names=sorted((rubric.spec.lexicons if rubric else {}).keys()),
                    history=history[:5], saved=saved if saved and _is_version(saved) else None,
                    has_data=settings.runner.data_path is not None,
                    when_text=_condition_text, example_ids=[e.get("id") for e in doc.get("examples") or []])

    @app.get("/rubrics/{rubric_id}/history", response_class=HTMLResponse)
    async def history(request: Request, rubric_id: str) -> HTMLResponse:
        text, sha = store.read(rubric_id)
        current = _version_of(text)
        return page(request, "history.html.j2", rubric_id=rubric_id, entries=store.history(rubric_id),
                    current=current, sha=sha)

    @app.get("/rubrics/{rubric_id}/versions/{version}", response_class=HTMLResponse)
    async def version(request: Request, rubric_id: str, version: str) -> HTMLResponse:
        old = store.version_text(rubric_id, version)
        text, sha = store.read(rubric_id)
        current = _version_of(text)
        diff = list(difflib.unified_diff(old.splitlines(), text.splitlines(), f"version {version}",
                                         f"version {current} (current)", lineterm="", n=2))
        entry = next((e for e in store.history(rubric_id) if e.version == version), None)
        return page(request, "version.html.j2", rubric_id=rubric_id, version=version, text=old, diff=diff,
                    current=current, sha=sha, entry=entry)

    # --- editor actions ---------------------------------------------------------------------------

    @app.post("/rubrics/{rubric_id}/check")
    async def check(request: Request, rubric_id: str) -> JSONResponse:
        form = await form_of(request)
        draft, _, sha = draft_from(rubric_id, form)
        outcomes = []
        if draft.rubric is not None:
            outcomes = [{"example": o.example, "expected": o.expected.value,
                         "got": o.got.value if hasattr(o.got, "value") else str(o.got), "passed": o.passed}
                        for o in check_examples(draft.rubric)]
        return JSONResponse({"ok": draft.ok, "problems": [_problem(p) for p in draft.problems],
                             "examples": outcomes, "stale": form.get("base_sha") != sha,
                             "version": draft.rubric.version if draft.rubric else None})

    @app.post("/rubrics/{rubric_id}/render", response_class=HTMLResponse)
    async def render(request: Request, rubric_id: str) -> HTMLResponse:
        from judge.tiers.llm import build_messages

        form = await form_of(request)
        draft, _, _ = draft_from(rubric_id, form)
        if draft.rubric is None:
            return page(request, "_problems.html.j2", problems=draft.problems, status=422)
        records = {r.id.split(":", 1)[1]: r for r in example_records(draft.rubric)}
        chosen = str(form.get("render_example") or next(iter(records), ""))
        if chosen not in records:
            return page(request, "_problems.html.j2", status=422, problems=[Problem(
                f"render_example: no example {chosen!r} in the draft; choose one of {', '.join(records)}",
                "render_example", "render_example")])
        messages, _, stripped = build_messages(records[chosen], draft.rubric)
        return page(request, "_render.html.j2", messages=messages, example=chosen, stripped=stripped)

    @app.post("/rubrics/{rubric_id}/test", response_class=HTMLResponse)
    async def test_run(request: Request, rubric_id: str) -> HTMLResponse:
        form = await form_of(request)
        draft, _, _ = draft_from(rubric_id, form)
        if draft.rubric is None:
            return page(request, "_problems.html.j2", problems=draft.problems, status=422)
        saved = _saved_rubric(store, rubric_id)
        if saved is None:
            return page(request, "_problems.html.j2", status=422, problems=[Problem(
                "The saved rubric does not load, so there is nothing to compare with; fix it and save first.",
                "", None)])
        try:
            sample = max(0, min(MAX_SAMPLE, int(str(form.get("sample") or 0))))
        except ValueError:
            sample = 0
        report = await settings.runner.run(saved, draft.rubric, sample)
        return page(request, "_testrun.html.j2", report=report, saved=saved, draft=draft.rubric,
                    problems=draft.problems)

    @app.post("/rubrics/{rubric_id}/save")
    async def save(request: Request, rubric_id: str) -> JSONResponse:
        form = await form_of(request)
        base_sha = str(form.get("base_sha") or "")
        store.check_fresh(rubric_id, base_sha)
        draft, _, _ = draft_from(rubric_id, form)
        if not draft.ok or draft.text is None:
            return JSONResponse({"ok": False, "error": "The edit was not saved: fix the problems below first.",
                                 "problems": [_problem(p) for p in draft.problems]}, status_code=422)
        entry = store.save(rubric_id, draft.text, base_sha=base_sha, bump=str(form.get("bump") or "minor"),
                           note=str(form.get("note") or ""), author=str(form.get("author") or "") or None,
                           validate=lambda text: _validate(store, rubric_id, text))
        return JSONResponse({"ok": True, "version": entry.version,
                             "url": f"/rubrics/{rubric_id}?saved={entry.version}"})

    @app.post("/rubrics/{rubric_id}/versions/{version}/restore")
    async def restore(request: Request, rubric_id: str, version: str) -> Response:
        form = await form_of(request)
        try:
            entry = store.restore(rubric_id, version, base_sha=str(form.get("base_sha") or ""),
                                  note=str(form.get("note") or ""), author=str(form.get("author") or "") or None,
                                  validate=lambda text: _validate(store, rubric_id, text))
        except StoreError as exc:
            return page(request, "error.html.j2", status=exc.status, message=exc.message,
                        back=f"/rubrics/{rubric_id}/history")
        return RedirectResponse(f"/rubrics/{rubric_id}?saved={entry.version}", status_code=303)

    return app


def _problem(p: Problem) -> dict[str, str | None]:
    return {"message": p.message, "path": p.path, "field": p.field}


def _validate(store: RubricStore, rubric_id: str, text: str) -> None:
    """The last check before a file is replaced: the text must load and its examples agree with its rule."""
    _, problems = check_text(store.folder(rubric_id), text)
    if problems:
        raise RubricError(store.folder(rubric_id) / "rubric.yaml", problems[0].path or "(file)", problems[0].message)


def _saved_rubric(store: RubricStore, rubric_id: str) -> Rubric | None:
    try:
        return load_rubric_folder(store.folder(rubric_id))
    except RubricError:
        return None


def _version_of(text: str) -> str:
    try:
        return str(load_rt(text).get("version", "?"))
    except YamlTextError:
        return "?"


def _is_version(value: str) -> bool:
    parts = value.split(".")
    return 2 <= len(parts) <= 3 and all(p.isdigit() and len(p) <= 6 for p in parts)


def _condition_text(value: Any) -> str:
    """A rule's condition as the one-line YAML a clinician types: {any_yes: [a, b]}."""
    if value is None:
        return ""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_condition_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_condition_text(v) for v in value) + "]"
    return str(value)
