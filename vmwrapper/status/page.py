"""The status page's HTML, stylesheet and script.

The HTML is rendered with the current snapshot already in it, so the page is
complete without script (and in ``chromium --dump-dom``); the script then
listens on ``/events`` (Server-Sent Events) and rewrites each field in place,
so the page follows the VM without reloading. Texts are set with
``textContent`` only: guest output can never become markup. The stylesheet
and script are separate files so the page can forbid inline script (see the
``Content-Security-Policy`` in :mod:`.server`). One column, large text:
readable in a phone-size window.
"""

from __future__ import annotations

from html import escape
from typing import Any

#: Rows of the fact list: (field in the public snapshot, label).
FACTS: tuple[tuple[str, str], ...] = (
    ("task", "Current task"),
    ("cpu_time_text", "CPU time"),
    ("checkpoints", "Checkpoints"),
    ("last_checkpoint_text", "Last checkpoint"),
    ("trickles_sent", "Reports sent for credit"),
    ("cpu_reported_text", "CPU time reported for credit"),
    ("hypervisor", "Hypervisor"),
)


def _text(value: Any) -> str:
    return escape("" if value is None else str(value))


def _progress(name: str, label: str, percent: float | None) -> str:
    value = "" if percent is None else f' value="{percent}"'
    shown = "unknown" if percent is None else f"{percent} %"
    return (f'<div class="bar"><span>{label}: <b data-field="{name}">{shown}</b></span>'
            f'<progress max="100" data-progress="{name}"{value}></progress></div>')


def render_page(public: dict[str, Any]) -> bytes:
    """The whole page for one public snapshot (:meth:`StatusSnapshot.to_public`)."""
    facts = "".join(
        f'<dt>{label}</dt><dd data-field="{name}">{_text(public.get(name)) or "-"}</dd>'
        for name, label in FACTS)
    output = _text("\n".join(public.get("guest_output", [])))
    state = _text(public["vm_state"])
    html = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>boinc-vm status</title>
<link rel="stylesheet" href="/app.css">
<script src="/app.js" defer></script>
</head><body>
<main>
<h1>Virtual machine job</h1>
<p id="state" class="state state-{state}" data-state="{state}">
<span data-field="state_text">{_text(public["state_text"])}</span></p>
<p class="message" data-field="message">{_text(public.get("message"))}</p>
{_progress("fraction_done", "Job progress", public.get("fraction_done"))}
{_progress("task_progress", "Task progress", public.get("task_progress"))}
<dl>{facts}</dl>
<h2>Last lines from the virtual machine</h2>
<pre id="output" data-field="guest_output">{output}</pre>
<p class="live" id="live">Live updates: <span id="link">connecting</span></p>
</main></body></html>
"""
    return html.encode("utf-8")


STYLESHEET = b"""
body { font-family: sans-serif; margin: 0; background: #f4f5f7; color: #1d1f23; }
main { max-width: 46rem; margin: 0 auto; padding: 0.8rem; }
h1 { font-size: 1.3rem; margin: 0.2rem 0 0.6rem; }
h2 { font-size: 1.05rem; margin: 1rem 0 0.3rem; }
.state { font-size: 1.2rem; font-weight: bold; padding: 0.6rem 0.8rem; border-radius: 0.4rem;
         background: #dde3ea; margin: 0 0 0.4rem; }
.state-running { background: #c9ecd0; }
.state-paused { background: #ffe8a8; }
.state-crashed { background: #f8c4c4; }
.state-booting, .state-restoring, .state-saving, .state-starting { background: #cfe0f6; }
.message:empty { display: none; }
.bar { margin: 0.5rem 0; }
.bar span { display: block; }
progress { width: 100%; height: 1.1rem; }
dl { display: grid; grid-template-columns: minmax(8rem, max-content) 1fr; gap: 0.3rem 0.8rem;
     margin: 0.8rem 0; }
dt { color: #555c66; }
dd { margin: 0; overflow-wrap: anywhere; }
pre { background: #1d1f23; color: #e8e8e8; padding: 0.6rem; border-radius: 0.4rem;
      white-space: pre-wrap; overflow-wrap: anywhere; font-size: 0.8rem; min-height: 3rem;
      max-height: 22rem; overflow-y: auto; }
.live { color: #555c66; font-size: 0.8rem; }
@media (max-width: 30rem) { dl { grid-template-columns: 1fr; } dd { margin-bottom: 0.4rem; } }
"""

SCRIPT = b"""
"use strict";
(function () {
  var link = document.getElementById("link");
  function show(snapshot) {
    document.querySelectorAll("[data-field]").forEach(function (el) {
      var name = el.getAttribute("data-field");
      var value = snapshot[name];
      if (name === "guest_output") { value = (value || []).join("\\n"); }
      else if (name === "fraction_done" || name === "task_progress") {
        value = (value === null || value === undefined) ? "unknown" : value + " %";
      }
      el.textContent = (value === null || value === undefined || value === "") ?
        (el.tagName === "DD" ? "-" : "") : String(value);
    });
    document.querySelectorAll("[data-progress]").forEach(function (el) {
      var value = snapshot[el.getAttribute("data-progress")];
      if (value === null || value === undefined) { el.removeAttribute("value"); }
      else { el.value = value; }
    });
    var state = document.getElementById("state");
    state.className = "state state-" + snapshot.vm_state;
    state.setAttribute("data-state", snapshot.vm_state);
    var output = document.getElementById("output");
    output.scrollTop = output.scrollHeight;
  }
  if (!window.EventSource) { link.textContent = "not supported: reload to update"; return; }
  var events = new EventSource("/events");
  events.onopen = function () { link.textContent = "on"; };
  events.onerror = function () { link.textContent = "lost, reconnecting"; };
  events.onmessage = function (event) { show(JSON.parse(event.data)); };
})();
"""
