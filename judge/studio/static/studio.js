// psyjudge studio: live checks, test runs, prompt preview and saving for the rubric editor.
// Plain JavaScript, no build step. Every POST carries the page's CSRF token in a header.
"use strict";

(function () {
  const form = document.getElementById("editor");
  if (!form) return;
  const rubric = form.dataset.rubric;
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const base = "/rubrics/" + encodeURIComponent(rubric);

  function post(path) {
    return fetch(base + path, {
      method: "POST",
      body: new FormData(form),
      headers: { "X-CSRF-Token": csrf },
      credentials: "same-origin",
    });
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // --- live checks ------------------------------------------------------------------------------
  const lint = document.getElementById("lint");
  let timer = null;
  let seq = 0;

  function clearMarks() {
    form.querySelectorAll(".invalid").forEach((n) => n.classList.remove("invalid"));
    form.querySelectorAll(".field-problem").forEach((n) => n.remove());
  }

  function mark(problem) {
    if (!problem.field) return;
    const input = form.querySelector('[name="' + CSS.escape(problem.field) + '"]');
    if (!input) return;
    input.classList.add("invalid");
    const details = input.closest("details");
    if (details) details.open = true;
    const note = el("p", "field-problem problem", problem.message);
    input.insertAdjacentElement("afterend", note);
  }

  function showProblems(data) {
    clearMarks();
    lint.textContent = "";
    if (data.stale) {
      lint.appendChild(el("p", "problem stale", "This rubric was saved elsewhere after you opened it: saving will be refused. Open it again in a new tab."));
    }
    if (data.ok) {
      lint.className = "ok";
      lint.appendChild(el("p", "ok", "The draft passes every check (" + data.examples.length + " examples agree with the rule)."));
      return;
    }
    lint.className = "bad";
    (data.problems || []).forEach((p) => {
      const line = el("p", "problem", p.message);
      if (p.field) line.dataset.field = p.field;
      lint.appendChild(line);
      mark(p);
    });
  }

  function check() {
    const mine = ++seq;
    post("/check")
      .then((r) => r.json())
      .then((data) => { if (mine === seq) showProblems(data); })
      .catch((e) => { lint.textContent = "Could not check the draft: " + e; });
  }

  form.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(check, 350);
  });
  form.addEventListener("change", () => {
    clearTimeout(timer);
    timer = setTimeout(check, 50);
  });
  form.addEventListener("submit", (e) => e.preventDefault());

  // --- adding entries -----------------------------------------------------------------------------
  document.querySelectorAll("button.add").forEach((button) => {
    button.addEventListener("click", () => {
      const holder = button.previousElementSibling;
      const index = Number(holder.dataset.next);
      holder.dataset.next = String(index + 1);
      const html = document.getElementById(button.dataset.template).innerHTML.split("__I__").join(String(index));
      holder.insertAdjacentHTML("beforeend", html);
      wireTurns(holder);
      const first = holder.lastElementChild.querySelector("input[type=text], textarea");
      if (first) first.focus();
    });
  });

  function wireTurns(scope) {
    scope.querySelectorAll("button.add-turn").forEach((button) => {
      if (button.dataset.wired) return;
      button.dataset.wired = "1";
      button.addEventListener("click", () => {
        const example = button.dataset.example;
        const turns = button.previousElementSibling;
        const j = Number(turns.dataset.next || "0");
        turns.dataset.next = String(j + 1);
        const html = document.getElementById("tpl-turn").innerHTML
          .split("__I__").join(example).split("__J__").join(String(j));
        turns.insertAdjacentHTML("beforeend", html);
      });
    });
  }
  wireTurns(document);

  // --- test run and prompt ------------------------------------------------------------------------
  function fragment(path, target, button, busy) {
    const label = button.textContent;
    button.disabled = true;
    button.textContent = busy;
    post(path)
      .then((r) => r.text())
      .then((html) => {
        // Server-rendered and escaped by the studio's sandboxed templates.
        target.innerHTML = html;
        target.scrollIntoView({ behavior: "smooth", block: "start" });
      })
      .catch((e) => { target.textContent = "Failed: " + e; })
      .finally(() => { button.disabled = false; button.textContent = label; });
  }

  const runTest = document.getElementById("run-test");
  runTest.addEventListener("click", () =>
    fragment("/test", document.getElementById("testrun"), runTest, "Running..."));
  const render = document.getElementById("render-prompt");
  render.addEventListener("click", () =>
    fragment("/render", document.getElementById("render"), render, "Rendering..."));

  // --- save -------------------------------------------------------------------------------------
  const save = document.getElementById("save");
  const message = document.getElementById("save-message");
  save.addEventListener("click", () => {
    message.textContent = "";
    message.className = "";
    if (!document.getElementById("note").value.trim()) {
      message.className = "problem";
      message.textContent = "Write a change note: why this version differs from the last one.";
      document.getElementById("note").focus();
      return;
    }
    save.disabled = true;
    post("/save")
      .then((r) => r.json().then((data) => ({ status: r.status, data })))
      .then(({ status, data }) => {
        if (data.ok) {
          window.location.assign(data.url);
          return;
        }
        message.className = "problem";
        message.textContent = data.error || ("Not saved (HTTP " + status + ").");
        if (data.problems) showProblems({ ok: false, problems: data.problems, examples: [] });
      })
      .catch((e) => { message.className = "problem"; message.textContent = "Not saved: " + e; })
      .finally(() => { save.disabled = false; });
  });
})();
