// The admin console: the messaging center (automations, templates with a live preview, system
// notifications), the email log (outgoing, incoming, set aside, suppressions), people's
// settings and attention (working hours, pauses), the fleet's status and the history of
// changes. Every call is an admin route, made with the admin's own session (the cookie the
// messenger's sign-in sets). Text from the server is only ever set as text; an email's HTML
// is shown in a sandboxed frame without scripts.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat(Infinity)) if (c != null && c !== false) node.append(c);
  return node;
}

// A dotted name (a queue's), which breaks after a dot before it breaks anywhere else.
function dotted(name) {
  const parts = String(name).split(".");
  return parts.map((part, i) => (i < parts.length - 1 ? [`${part}.`, el("wbr")] : part));
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (r.status === 204) return null;
  const type = r.headers.get("Content-Type") || "";
  const data = type.includes("json") ? await r.json().catch(() => ({})) : await r.text();
  if (!r.ok) {
    const e = new Error((data && data.error) || r.statusText);
    e.status = r.status;
    e.data = data;
    throw e;
  }
  return data;
}

function say(text, error) {
  const line = $("status-line");
  line.textContent = text;
  line.classList.toggle("error", Boolean(error));
}

function when(iso) {
  return iso ? new Date(iso).toLocaleString([], {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
  }) : "";
}

function table(headers, rows) {
  return el("table", {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col", text: h })))),
    el("tbody", {}, rows));
}

// A button that asks once more before it acts (no browser dialog).
function confirmButton(label, again, action, cls) {
  const button = el("button", { type: "button", class: cls || "danger", text: label });
  let armed = false;
  button.addEventListener("click", async () => {
    if (!armed) {
      armed = true;
      button.textContent = again;
      return;
    }
    button.disabled = true;
    try { await action(); } finally { button.disabled = false; armed = false; button.textContent = label; }
  });
  button.addEventListener("blur", () => { armed = false; button.textContent = label; });
  return button;
}

const state = { me: null, section: null, timer: null, catalogue: null };
// Read by the browser tests.
window.console_state = state;

// ---------------------------------------------------------------------------------------------
// Automated messages

const TRIGGERS = ["item_created", "status_changed", "item_closed", "assigned", "message_posted"];
const ACTIONS = ["post_message", "send_email"];
const AUDIENCES = ["followers", "assignee", "requester"];

function select(name, values, current, label) {
  const s = el("select", { id: name, name });
  for (const v of values) s.append(el("option", { value: v, text: v, selected: v === current }));
  return [el("label", { for: name, text: label }), s];
}

async function automations() {
  const list = await api("GET", "/automations");
  list.sort((a, b) => Number(b.critical) - Number(a.critical) || a.id - b.id);
  const rows = list.map((a) => {
    const enabled = el("input", { type: "checkbox", checked: a.enabled, disabled: a.critical,
      "aria-label": `${a.name} enabled` });
    enabled.addEventListener("change", async () => {
      try {
        await api("PATCH", `/automations/${a.id}`, { enabled: enabled.checked });
        say(`${a.name}: ${enabled.checked ? "enabled" : "disabled"}.`);
      } catch (e) {
        enabled.checked = !enabled.checked;
        say(`Not changed: ${e.message}`, true);
      }
    });
    return el("tr", { "data-id": a.id },
      el("td", { class: "wrap" }, el("strong", { text: a.name }),
        a.critical ? el("p", { class: "locked", text: `Locked. ${a.note || ""}` }) : null),
      el("td", { text: a.trigger }),
      el("td", { class: "wrap" }, el("code", { text: a.condition ? JSON.stringify(a.condition) : "always" })),
      el("td", { class: "wrap", text: a.action === "send_email" ? `send email (${a.template || "?"}) to ${a.audience || "?"}` : `post message as bot ${a.bot_id ?? "?"}` }),
      el("td", { text: `${a.recent_messages.length} posted, ${a.recent_capped_runs} capped (last 100 runs)` }),
      el("td", {}, enabled),
      el("td", {}, el("button", { type: "button", text: "Edit", onclick: () => automationForm(a) }),
        a.critical ? null : confirmButton("Delete", "Delete: sure?", async () => {
          await api("DELETE", `/automations/${a.id}`);
          say(`${a.name} deleted.`);
          render();
        })));
  });
  view(el("h2", { text: "Automated messages" }),
    el("p", { class: "muted", text: "What runs when something happens to an item. The critical automation (the message notifications) comes first and cannot be disabled." }),
    el("button", { type: "button", class: "primary", text: "New automation", onclick: () => automationForm(null) }),
    table(["Name", "Trigger", "Condition", "Action", "Recent runs", "Enabled", ""], rows),
    el("div", { id: "automation-form" }));
}

async function automationForm(a) {
  const catalogue = await templatesCatalogue();
  const names = catalogue.templates.map((t) => t.name);
  const form = el("form", { class: "grid card", "aria-label": a ? `Edit ${a.name}` : "New automation" },
    el("h3", { text: a ? `Edit ${a.name}` : "New automation" }),
    el("label", { for: "a-name", text: "Name" }), el("input", { id: "a-name", name: "name", value: a ? a.name : "", required: true }),
    select("a-trigger", TRIGGERS, a ? a.trigger : "item_created", "Trigger"),
    el("label", { for: "a-condition", text: "Condition (JSON, empty for always)" }),
    el("textarea", { id: "a-condition", rows: 2, text: a && a.condition ? JSON.stringify(a.condition) : "" }),
    select("a-action", ACTIONS, a ? a.action : "send_email", "Action"),
    select("a-template", [""].concat(names), a ? a.template || "" : "", "Template (send email)"),
    select("a-audience", [""].concat(AUDIENCES), a ? a.audience || "" : "", "Audience (send email)"),
    el("label", { for: "a-body", text: "Message (post message)" }), el("textarea", { id: "a-body", rows: 3, text: a ? a.body || "" : "" }),
    el("label", { for: "a-bot", text: "Bot id (post message)" }), el("input", { id: "a-bot", type: "number", value: a && a.bot_id != null ? a.bot_id : "" }),
    el("div", { class: "row-actions" }, el("button", { type: "submit", class: "primary", text: "Save automation" }),
      el("button", { type: "button", text: "Cancel", onclick: () => { $("automation-form").replaceChildren(); } })));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    let condition = null;
    const text = $("a-condition").value.trim();
    if (text) {
      try { condition = JSON.parse(text); } catch (err) { say(`The condition is not JSON: ${err.message}`, true); return; }
    }
    const body = { name: $("a-name").value, trigger: $("a-trigger").value, condition, action: $("a-action").value };
    if (body.action === "send_email") {
      body.template = $("a-template").value || null;
      body.audience = $("a-audience").value || null;
    } else {
      body.body = $("a-body").value;
      body.bot_id = $("a-bot").value ? Number($("a-bot").value) : null;
    }
    try {
      if (a) await api("PATCH", `/automations/${a.id}`, body);
      else await api("POST", "/automations", body);
      say(`Automation ${body.name} saved.`);
      render();
    } catch (err) {
      say(`Not saved: ${err.message}`, true);
    }
  });
  $("automation-form").replaceChildren(form);
  $("a-name").focus();
}

// ---------------------------------------------------------------------------------------------
// Automated emails: the templates, and the editor with its live preview

async function templatesCatalogue() {
  state.catalogue = await api("GET", "/templates");
  return state.catalogue;
}

async function templates(name) {
  if (name) return editor(name);
  const catalogue = await templatesCatalogue();
  const rows = catalogue.templates.map((t) => el("tr", {},
    el("td", {}, el("a", { href: `#templates/${t.name}`, text: t.name })),
    el("td", { text: t.locales.join(", ") }),
    el("td", { class: "wrap", text: t.automations.map((a) => a.name).concat(t.system_notifications.map((s) => `system: ${s}`)).join("; ") || "nothing yet" })));
  const nameInput = el("input", { id: "new-template", pattern: "[a-z0-9][a-z0-9_-]{0,63}", placeholder: "e.g. survey_invite" });
  const create = el("form", { class: "filters", "aria-label": "New template" },
    el("label", { for: "new-template" }, "New template name", nameInput),
    el("button", { type: "submit", class: "primary", text: "Create" }));
  create.addEventListener("submit", (e) => {
    e.preventDefault();
    const n = nameInput.value.trim();
    if (!/^[a-z0-9][a-z0-9_-]{0,63}$/.test(n)) { say("A template name is lower-case letters, digits, _ and -.", true); return; }
    location.hash = `#templates/${n}`;
  });
  view(el("h2", { text: "Automated emails" }),
    el("p", { class: "muted", text: "Every template, its locales, and what sends it. Saved versions override the shipped files and reach every process within seconds." }),
    table(["Template", "Locales", "Sent by"], rows), create);
}

const SKELETON = {
  subject: "{{item.title}}",
  text: "Hello {{recipient.name}},\n\n{{item.title}}\n",
  html: "<p>Hello {{recipient.name}},</p>\n<p>{{item.title}}</p>\n",
};

// Every locale with a templates folder.
async function localesOf() {
  const catalogue = state.catalogue || await templatesCatalogue();
  const all = {};
  for (const t of catalogue.templates) for (const l of t.locales) all[l] = true;
  return all;
}

async function editor(name) {
  const catalogue = state.catalogue || await templatesCatalogue();
  const known = catalogue.templates.find((t) => t.name === name);
  // The default locale first (stored as ""), then the others that have templates.
  const others = Object.keys(await localesOf()).filter((l) => l !== catalogue.default_locale);
  const localeSelect = el("select", { id: "t-locale" },
    el("option", { value: "", text: `${catalogue.default_locale} (default)` }),
    others.map((l) => el("option", { value: l, text: known && known.locales.includes(l) ? l : `${l} (falls back to the default)` })));
  const area = (part, rows) => el("textarea", { id: `t-${part}`, name: part, rows, spellcheck: "false" });
  const parts = el("div", { class: "parts" },
    el("label", { for: "t-locale", text: "Locale" }), localeSelect,
    el("label", { for: "t-subject", text: "Subject" }), area("subject", 2),
    el("label", { for: "t-text", text: "Text part" }), area("text", 10),
    el("label", { for: "t-html", text: "HTML part" }), area("html", 12));
  const preview = el("section", { class: "preview", "aria-labelledby": "preview-heading" },
    el("h3", { id: "preview-heading", text: "Preview with sample data" }),
    el("label", { for: "p-locale", text: "Locale shown" }), el("select", { id: "p-locale" }),
    el("ul", { id: "problems", class: "problems", "aria-live": "polite" }),
    el("p", { id: "p-subject", class: "wrap" }),
    el("iframe", { id: "p-html", title: "HTML preview", sandbox: "" }),
    el("pre", { id: "p-text" }));
  const buttons = el("div", { class: "row-actions" },
    el("button", { type: "button", id: "t-save", class: "primary", text: "Save" }),
    el("button", { type: "button", id: "t-revert", text: "Revert to the shipped file" }),
    el("button", { type: "button", id: "t-test", text: "Send a test to me" }),
    el("button", { type: "button", id: "t-history", text: "History" }));
  view(el("h2", {}, "Template ", el("code", { text: name })),
    el("p", {}, el("a", { href: "#templates", text: "\u2190 All templates" })),
    el("p", { id: "t-serving", class: "muted" }),
    buttons,
    el("div", { class: "editor" }, parts, preview),
    el("div", { id: "t-versions" }));
  let previews = [];
  const showPreview = () => {
    const chosen = previews.find((p) => p.locale === $("p-locale").value) || previews[0];
    $("p-subject").textContent = chosen ? `Subject: ${chosen.subject}` : "";
    $("p-text").textContent = chosen ? chosen.text : "";
    $("p-html").srcdoc = chosen ? chosen.html : "";
  };
  $("p-locale").addEventListener("change", showPreview);
  const draft = () => ({ locale: localeSelect.value, subject: $("t-subject").value, text: $("t-text").value, html: $("t-html").value });
  const showProblems = (problems) => {
    $("problems").replaceChildren(...problems.map((p) => el("li", {
      text: `${p.file}${p.line != null ? ` line ${p.line}` : ""}${p.column != null ? `, column ${p.column}` : ""}: ${p.reason}`,
    })));
  };
  let seq = 0;
  // A preview that answers after the admin has left the editor is dropped, failure included.
  const editing = $("problems");
  const refresh = async () => {
    if (!editing.isConnected) return;
    const mine = ++seq;
    try {
      const result = await api("POST", `/templates/${name}/preview`, draft());
      if (mine !== seq || !editing.isConnected) return;
      showProblems(result.problems);
      if (result.previews.length) {
        previews = result.previews;
        const shown = $("p-locale").value;
        $("p-locale").replaceChildren(...previews.map((p) => el("option", { value: p.locale, text: p.locale, selected: p.locale === shown })));
        showPreview();
      }
      document.body.dataset.preview = String(mine);
    } catch (e) {
      if (editing.isConnected) say(`Preview failed: ${e.message}`, true);
    }
  };
  let pending = null;
  for (const part of ["subject", "text", "html"]) {
    $(`t-${part}`).addEventListener("input", () => {
      clearTimeout(pending);
      pending = setTimeout(refresh, 250);
    });
  }
  let current = null;
  const load = async () => {
    try {
      current = await api("GET", `/templates/${name}?locale=${encodeURIComponent(localeSelect.value)}`);
      $("t-subject").value = current.subject;
      $("t-text").value = current.text;
      $("t-html").value = current.html;
    } catch (e) {
      if (e.status !== 404) throw e;
      current = { version: null, shipped: false, inherited: false };
      $("t-subject").value = SKELETON.subject;
      $("t-text").value = SKELETON.text;
      $("t-html").value = SKELETON.html;
    }
    $("t-serving").textContent = current.version != null
      ? `Serving version ${current.version}, saved in the console.`
      : current.shipped ? (current.inherited ? "Serving the default locale's shipped file (this locale has none of its own)." : "Serving the shipped file.")
      : "A new template: nothing serves it until it is saved.";
    $("t-revert").disabled = current.version == null || !current.shipped;
    $("t-test").disabled = current.version == null && !current.shipped;
    await refresh();
  };
  localeSelect.addEventListener("change", () => load().catch((e) => say(e.message, true)));
  $("t-save").addEventListener("click", async () => {
    try {
      await api("PUT", `/templates/${name}`, draft());
      say(`Saved ${name}: every process serves it within seconds.`);
      showProblems([]);
      await templatesCatalogue();
      await load();
    } catch (e) {
      if (e.status === 422 && e.data && e.data.problems) {
        showProblems(e.data.problems);
        say("Not saved: the template has problems (listed under the preview).", true);
      } else {
        say(`Not saved: ${e.message}`, true);
      }
    }
  });
  $("t-revert").addEventListener("click", async () => {
    try {
      await api("POST", `/templates/${name}/revert?locale=${encodeURIComponent(localeSelect.value)}`);
      say(`${name} serves its shipped file again.`);
      await load();
    } catch (e) {
      say(`Not reverted: ${e.message}`, true);
    }
  });
  $("t-test").addEventListener("click", async () => {
    try {
      const queued = await api("POST", `/templates/${name}/test`, { locale: localeSelect.value || null });
      say(`Test queued (outbox email ${queued.outbox_id}): the saved version, to your address. Find it under Outgoing.`);
    } catch (e) {
      say(`No test sent: ${e.message}`, true);
    }
  });
  $("t-history").addEventListener("click", async () => {
    const versions = await api("GET", `/templates/${name}/versions?locale=${encodeURIComponent(localeSelect.value)}`);
    $("t-versions").replaceChildren(el("h3", { text: "History" }), versions.length
      ? table(["Version", "Saved", "By", ""], versions.map((v) => el("tr", {},
        el("td", { text: String(v.id) }), el("td", { text: when(v.created_at) }),
        el("td", { text: v.author || "API token" }), el("td", { text: v.revert ? "revert to the shipped file" : "" }))))
      : el("p", { class: "muted", text: "No version saved in the console: the shipped file serves." }));
  });
  await load();
}

// ---------------------------------------------------------------------------------------------
// System notifications

async function system() {
  const list = await api("GET", "/system-notifications");
  const rows = list.map((n) => {
    const box = el("input", { type: "checkbox", checked: n.enabled, disabled: !n.can_disable, "aria-label": `${n.event} enabled` });
    box.addEventListener("change", async () => {
      try {
        await api("PATCH", `/system-notifications/${n.event}`, { enabled: box.checked });
        say(`${n.event}: ${box.checked ? "enabled" : "disabled"}.`);
      } catch (e) {
        box.checked = !box.checked;
        say(`Not changed: ${e.message}`, true);
      }
    });
    return el("tr", { "data-event": n.event },
      el("td", { text: n.event }),
      el("td", {}, el("a", { href: `#templates/${n.template}`, text: n.template })),
      el("td", {}, box),
      el("td", { class: "locked", text: n.warning ? `Locked: ${n.warning}` : "" }));
  });
  view(el("h2", { text: "System notifications" }),
    el("p", { class: "muted", text: "Emails the product sends on its own. The password reset cannot be disabled." }),
    table(["Event", "Template", "Enabled", ""], rows));
}

// ---------------------------------------------------------------------------------------------
// The email log: outgoing and incoming

const STATUSES = {
  out: ["queued", "sent", "skipped", "deferred", "failed", "bounced"],
  in: ["threaded", "created", "ignored", "rejected"],
};

async function log(direction) {
  const title = direction === "out" ? "Outgoing" : "Incoming";
  const filters = el("form", { class: "filters", "aria-label": `Filter ${title.toLowerCase()} email` },
    el("label", {}, "Status", el("select", { name: "status" }, el("option", { value: "", text: "any" }),
      STATUSES[direction].map((s) => el("option", { value: s, text: s })))),
    el("label", {}, "Address", el("input", { name: "address", type: "email" })),
    el("label", {}, "Person id", el("input", { name: "person_id", type: "number", min: "1" })),
    el("label", {}, "Conversation id", el("input", { name: "conversation_id", type: "number", min: "1" })),
    el("label", {}, "Since", el("select", { name: "since" },
      ["72h", "24h", "6h", "1h"].map((s) => el("option", { value: s, text: `last ${s}` })))),
    el("button", { type: "submit", class: "primary", text: "Show" }));
  const body = el("tbody", {});
  const more = el("button", { type: "button", text: "Older", hidden: true });
  view(el("h2", { text: title }),
    el("p", { class: "muted", text: "The last 72 hours, newest first. Open a row for its whole story." }),
    filters,
    el("table", { id: "log" }, el("thead", {}, el("tr", {},
      ["Time", "Status", direction === "out" ? "To" : "From", "Subject", "Why / what it caused", ""].map((h) => el("th", { scope: "col", text: h })))), body),
    more);
  let before = null;
  const page = async (reset) => {
    const q = new URLSearchParams({ direction, limit: "50" });
    for (const [k, v] of new FormData(filters)) if (v) q.set(k, v);
    if (!reset && before) q.set("before", before);
    const rows = await api("GET", `/email-log?${q}`);
    if (reset) body.replaceChildren();
    for (const r of rows) body.append(...logRow(r, direction));
    const ids = rows.map((r) => r.id).filter((id) => id > 0);
    before = ids.length ? Math.min(...ids) : before;
    more.hidden = rows.length < 50;
    document.body.dataset.logRows = String(body.querySelectorAll("tr.log-row").length);
  };
  filters.addEventListener("submit", (e) => { e.preventDefault(); page(true).catch((err) => say(err.message, true)); });
  more.addEventListener("click", () => page(false).catch((err) => say(err.message, true)));
  await page(true);
}

function logRow(r, direction) {
  const who = direction === "out" ? r.rcpt_to : r.mail_from;
  const detail = el("tr", { class: "detail", hidden: true }, el("td", { colspan: "6" }));
  const open = el("button", { type: "button", text: "Open", "aria-expanded": "false" });
  const row = el("tr", { class: "log-row", "data-id": String(r.id) },
    el("td", { text: when(r.created_at) }),
    el("td", {}, el("span", { class: `tag ${["sent", "threaded", "created"].includes(r.status) ? "ok" : ["failed", "bounced", "rejected"].includes(r.status) ? "bad" : ""}`, text: r.status })),
    el("td", { class: "wrap", text: who || "" }),
    el("td", { class: "wrap", dir: "auto", text: r.subject || "" }),
    el("td", { class: "wrap", text: r.action || r.reason || "" }),
    el("td", {}, open));
  open.addEventListener("click", () => {
    const opening = detail.hidden;
    detail.hidden = !opening;
    row.classList.toggle("open-row", opening);
    open.setAttribute("aria-expanded", String(opening));
    open.textContent = opening ? "Close" : "Open";
    if (opening && !detail.dataset.filled) {
      detail.dataset.filled = "1";
      detail.firstChild.append(story(r));
    }
  });
  return [row, detail];
}

function story(r) {
  const fields = [
    ["Logged", when(r.created_at)], ["Status", r.status], ["Reason", r.reason], ["Rule that decided", r.rule],
    ["SMTP reply", r.smtp_reply], ["What it caused", r.action], ["From", r.mail_from], ["To", r.rcpt_to],
    ["Subject", r.subject], ["Message-ID", r.message_id_header], ["Message", r.message_id],
    ["Conversation", r.conversation_id], ["Notification", r.notification_id], ["Outbox email", r.outbox_id],
  ].filter(([, v]) => v != null && v !== "");
  const dl = el("dl", { class: "story" }, fields.map(([k, v]) => [el("dt", { text: k }), el("dd", { dir: "auto", text: String(v) })]));
  const box = el("div", { class: "card" }, dl);
  // A queued email (id 0) has not gone yet: nothing to show.
  if (r.id > 0) box.append(sourceButton(`/email-log/${r.id}/source`));
  return box;
}

// The raw email as it went over the wire, on demand.
function sourceButton(path) {
  const holder = el("div", {});
  const button = el("button", { type: "button", text: "Show the raw email" });
  button.addEventListener("click", async () => {
    try {
      const text = await api("GET", path);
      holder.replaceChildren(el("pre", { class: "source", tabindex: "0", "aria-label": "Raw email", text }));
      button.remove();
    } catch (e) {
      say(e.status === 404 ? "Its source is no longer kept." : `No source: ${e.message}`, true);
    }
  });
  holder.append(button);
  return holder;
}

// ---------------------------------------------------------------------------------------------
// Set aside

async function setAside() {
  const list = await api("GET", "/set-aside?limit=100");
  const rows = list.map((m) => {
    const done = m.recovered_at
      ? el("span", { class: "tag ok", text: `Posted by ${m.recovered_by || "the API token"} as message ${m.recovered_message_id}` })
      : confirmButton("Post it anyway", "Post it: sure?", async () => {
        try {
          const posted = await api("POST", `/inbound-emails/${m.id}/post`);
          say(`Posted: ${posted.action}.`);
          render();
        } catch (e) {
          say(`Not posted: ${e.message}`, true);
        }
      }, "primary");
    return el("tr", { "data-id": String(m.id) },
      el("td", { text: when(m.received_at) }),
      el("td", { class: "wrap", text: m.sender || m.mail_from }),
      el("td", { class: "wrap", dir: "auto", text: m.subject || "" }),
      el("td", { class: "wrap" }, el("span", { class: "tag", text: m.verdict }), " ", m.reason),
      el("td", {}, done, sourceButton(`/inbound-emails/${m.id}/source`)));
  });
  view(el("h2", { text: "Set aside" }),
    el("p", { class: "muted", text: "Inbound mail that was not posted (automatic, unknown sender, rate-limited, failed authentication, no conversation), with why. Post a person's email set aside by mistake into its conversation, or as a new ticket: once, and recorded." }),
    list.length ? table(["Received", "From", "Subject", "Why", ""], rows) : el("p", { text: "Nothing set aside." }));
}

// ---------------------------------------------------------------------------------------------
// Suppressions

async function suppressions() {
  const list = await api("GET", "/suppressions");
  const rows = list.map((s) => el("tr", { "data-address": s.address },
    el("td", { class: "wrap", text: s.address }),
    el("td", { text: s.suppressed ? "suppressed" : "counting" }),
    el("td", { text: `${s.hard_bounces} hard, ${s.soft_bounces} soft` }),
    el("td", { text: s.last_status || "" }),
    el("td", { text: when(s.updated_at) }),
    el("td", {}, confirmButton("Remove", "Remove: sure?", async () => {
      try {
        await api("DELETE", `/suppressions/${encodeURIComponent(s.address)}`);
        say(`Email flows to ${s.address} again.`);
        render();
      } catch (e) {
        say(`Not removed: ${e.message}`, true);
      }
    }))));
  view(el("h2", { text: "Suppressions" }),
    el("p", { class: "muted", text: "Addresses whose email bounced. Unsubscribes and complaints stop a kind of email in the person's settings (People) instead." }),
    list.length ? table(["Address", "State", "Bounces", "Last status", "Since", ""], rows) : el("p", { text: "No address is suppressed." }));
}

// ---------------------------------------------------------------------------------------------
// People

const PREFERENCES = [
  ["see_conversations", "Permission to see conversations", [["followed_projects", "Only in projects they follow"], ["all_projects", "In all projects"]]],
  ["show_customer_conversations", "Show \u201cFrom customers\u201d in the messenger"],
  ["from_customers", "From customers", [["all", "Every new customer message"], ["mine", "Conversations they follow"], ["none", "None"]]],
  ["from_users", "From users and bots to customers", [["all", "Every message"], ["followed", "Conversations they follow"], ["none", "None"]]],
  ["followed_internal", "Internal messages they follow"],
  ["email_customer_messages", "Email: messages from customers"],
  ["email_replies", "Email: replies from users and bots to customers"],
  ["email_internal", "Email: internal messages"],
  ["email_assignments", "Email: assignment changes"],
  ["email_project_members", "Email: new users and teams in their projects"],
  ["accept_all_invitations", "Accept all invitations"],
];

const DAYS = [["mon", "Mon"], ["tue", "Tue"], ["wed", "Wed"], ["thu", "Thu"], ["fri", "Fri"], ["sat", "Sat"], ["sun", "Sun"]];

// Fields for working hours (A2) with ids under `prefix`; `hours` fills them (or Mon–Fri
// 09:00–17:00 in the browser's zone). Returns the nodes and a function that reads them back.
function hoursFields(prefix, hours) {
  const h = hours || { days: ["mon", "tue", "wed", "thu", "fri"], start: "09:00", end: "17:00",
    time_zone: Intl.DateTimeFormat().resolvedOptions().timeZone };
  const nodes = el("div", { class: "hours-fields", id: `${prefix}-fields` },
    el("fieldset", { class: "days" }, el("legend", { text: "Days" }),
      DAYS.map(([d, name]) => el("label", {}, el("input", { type: "checkbox", id: `${prefix}-${d}`, checked: h.days.includes(d) }), ` ${name}`))),
    el("label", { for: `${prefix}-start`, text: "From" }),
    el("input", { type: "time", id: `${prefix}-start`, value: h.start }),
    el("label", { for: `${prefix}-end`, text: "Until (earlier than From: the next day)" }),
    el("input", { type: "time", id: `${prefix}-end`, value: h.end }),
    el("label", { for: `${prefix}-zone`, text: "Time zone (IANA name)" }),
    el("input", { id: `${prefix}-zone`, value: h.time_zone, autocomplete: "off", spellcheck: "false" }));
  const read = () => ({
    days: DAYS.map(([d]) => d).filter((d) => $(`${prefix}-${d}`).checked),
    start: $(`${prefix}-start`).value,
    end: $(`${prefix}-end`).value,
    time_zone: $(`${prefix}-zone`).value.trim(),
  });
  return [nodes, read];
}

function describeHours(h) {
  return h ? `${h.days.join(", ")} ${h.start}\u2013${h.end} ${h.time_zone}` : "none";
}

// The organisation's default working hours for users who did not choose their own.
async function defaultHours() {
  const d = await api("GET", "/attention/defaults");
  const [fields, read] = hoursFields("org-hours", d.working_hours);
  const on = el("input", { type: "checkbox", id: "org-hours-on", checked: d.working_hours !== null });
  fields.hidden = !on.checked;
  on.addEventListener("change", () => { fields.hidden = !on.checked; });
  const form = el("form", { class: "grid card", "aria-labelledby": "org-hours-heading" },
    el("h3", { id: "org-hours-heading", text: "Working hours for users" }),
    el("p", { class: "muted", text: "Outside them a user gets no pings and their emails wait until the hours start. Users may choose their own; customers have none." }),
    el("label", {}, on, " Users have working hours unless they choose their own"),
    fields,
    el("div", { class: "row-actions" }, el("button", { type: "submit", class: "primary", text: "Save working hours" })));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const saved = await api("PUT", "/attention/defaults", { working_hours: on.checked ? read() : null });
      say(`Working hours for users: ${describeHours(saved.working_hours)}.`);
    } catch (err) {
      say(`Not saved: ${err.message}`, true);
    }
  });
  return form;
}

// A person's attention (A1–A3): their pause, working hours and wait for quiet.
async function personAttention(id, person) {
  const a = await api("GET", `/people/${id}/attention`);
  const own = a.working_hours && typeof a.working_hours === "object" ? a.working_hours : null;
  const [fields, read] = hoursFields("person-hours", own || a.working_hours_in_effect);
  const mode = el("select", { id: "person-hours-mode" },
    el("option", { value: "default", text: "The organisation's", selected: a.working_hours === null }),
    el("option", { value: "none", text: "None: any time", selected: a.working_hours === "none" }),
    el("option", { value: "own", text: "Their own", selected: Boolean(own) }));
  fields.hidden = mode.value !== "own";
  mode.addEventListener("change", () => { fields.hidden = mode.value !== "own"; });
  const quiet = el("select", { id: "person-quiet" },
    el("option", { value: "default", text: "The organisation's default", selected: a.wait_for_quiet === null }),
    el("option", { value: "yes", text: "Yes", selected: a.wait_for_quiet === true }),
    el("option", { value: "no", text: "No", selected: a.wait_for_quiet === false }));
  const now = [];
  if (a.dnd_until) now.push(`Do not disturb until ${when(a.dnd_until)}.`);
  if (a.outside_hours_until) now.push(`Outside working hours until ${a.outside_hours_until_local}.`);
  if (!now.length) now.push("Emails go as they fall due.");
  const form = el("form", { class: "grid card", "aria-labelledby": "person-attention-heading" },
    el("h3", { id: "person-attention-heading", dir: "auto", text: `${person.name}'s attention` }),
    el("p", { id: "person-attention-now", class: "muted", text: now.join(" ") }),
    a.dnd_until ? el("div", { class: "row-actions" }, el("button", { type: "button", id: "person-dnd-end", text: "End the pause now",
      onclick: async () => {
        try {
          await api("PUT", `/people/${id}/attention`, { dnd_until: null });
          say(`${person.name}'s pause ended; held emails go now.`);
          await personAttention(id, person).then((f) => form.replaceWith(f));
        } catch (err) { say(`Not changed: ${err.message}`, true); }
      } })) : null,
    el("label", { for: "person-hours-mode", text: "Working hours" }), mode, fields,
    el("label", { for: "person-quiet", text: "Emails wait for a conversation to go quiet" }), quiet,
    el("div", { class: "row-actions" }, el("button", { type: "submit", class: "primary", text: "Save attention" })));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const change = {
      working_hours: mode.value === "own" ? read() : mode.value === "none" ? "none" : null,
      wait_for_quiet: quiet.value === "default" ? null : quiet.value === "yes",
    };
    try {
      await api("PUT", `/people/${id}/attention`, change);
      say(`${person.name}'s attention saved.`);
      form.replaceWith(await personAttention(id, person));
    } catch (err) {
      say(`Not saved: ${err.message}`, true);
    }
  });
  return form;
}

async function people(id) {
  const search = el("form", { class: "filters", role: "search", "aria-label": "Find people" },
    el("label", {}, "Name or address", el("input", { name: "q", type: "search" })),
    el("button", { type: "submit", class: "primary", text: "Find" }));
  const results = el("div", {});
  const settings = el("div", { id: "person-settings" });
  view(el("h2", { text: "People" }), await defaultHours(), search, results, settings);
  const find = async () => {
    const q = new URLSearchParams({ kind: "user", limit: "50" });
    const text = new FormData(search).get("q");
    if (text) q.set("q", text);
    const list = await api("GET", `/people?${q}`);
    results.replaceChildren(list.length ? table(["Name", "Address", "Admin", ""], list.map((p) => el("tr", {},
      el("td", { dir: "auto", text: p.name }), el("td", { class: "wrap", text: p.email || "" }),
      el("td", { text: p.admin ? "admin" : "" }),
      el("td", {}, el("a", { href: `#people/${p.id}`, text: "Settings" }))))) : el("p", { text: "Nobody found." }));
  };
  search.addEventListener("submit", (e) => { e.preventDefault(); find().catch((err) => say(err.message, true)); });
  await find();
  if (id) await personSettings(Number(id), settings);
}

async function personSettings(id, holder) {
  const [person, prefs] = await Promise.all([api("GET", `/people/${id}`), api("GET", `/people/${id}/preferences`)]);
  const form = el("form", { class: "grid card", "aria-label": `Settings of ${person.name}` },
    el("h3", { dir: "auto", text: `${person.name}'s settings` }),
    el("p", { class: "muted", text: `${person.email || "no address"}${person.admin ? " \u00b7 admin" : ""}${person.active ? "" : " \u00b7 deactivated"}` }),
    PREFERENCES.map(([name, label, options]) => options
      ? [el("label", { for: `pref-${name}`, text: label }),
        el("select", { id: `pref-${name}`, name }, options.map(([v, t]) => el("option", { value: v, text: t, selected: prefs[name] === v })))]
      : el("label", {}, el("input", { type: "checkbox", id: `pref-${name}`, name, checked: Boolean(prefs[name]) }), ` ${label}`)),
    el("div", { class: "row-actions" }, el("button", { type: "submit", class: "primary", text: "Save settings" })));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const patch = {};
    for (const [name, , options] of PREFERENCES) {
      const input = $(`pref-${name}`);
      patch[name] = options ? input.value : input.checked;
    }
    try {
      await api("PATCH", `/people/${id}/preferences`, patch);
      say(`${person.name}'s settings saved.`);
    } catch (err) {
      say(`Not saved: ${err.message}`, true);
    }
  });
  holder.replaceChildren(form, await personAttention(id, person));
}

// ---------------------------------------------------------------------------------------------
// Status and history

async function status() {
  const draw = async () => {
    const s = await api("GET", "/status");
    const queues = Array.isArray(s.queues) ? s.queues : [];
    const db = s.database || {};
    const body = el("div", { id: "status-report" },
      el("h3", { text: "Queues" }),
      s.queues && s.queues.error ? el("p", { class: "status error", text: `Broker: ${s.queues.error}` })
        : table(["Queue", "Messages", "Consumers"], queues.map((q) => el("tr", {},
          el("td", { class: "wrap" }, dotted(q.queue)), el("td", { text: q.missing ? "missing" : String(q.messages) }),
          el("td", { text: q.missing ? "" : String(q.consumers) })))),
      el("p", { text: `Dead letters: ${s.dead_letters ?? "unknown"}` }),
      el("h3", { text: "Work" }),
      db.error ? el("p", { class: "status error", text: `Database: ${db.error}` }) : el("dl", { class: "story" },
        el("dt", { text: "Notifications pending" }),
        el("dd", { text: (db.notifications_pending || []).map((b) => `${b.when}: ${b.count}`).join("; ") || "none" }),
        el("dt", { text: "Stuck claims" }),
        el("dd", { text: db.stuck_claims ? `${db.stuck_claims.notifications} notifications, ${db.stuck_claims.outbox} outbox emails (older than ${db.stuck_claims.lease_s} s)` : "" }),
        el("dt", { text: "Not dispatched after a window" }), el("dd", { text: String(db.messages_not_dispatched_after_window ?? "") }),
        el("dt", { text: "Last sweep" }), el("dd", { text: db.last_sweep ? `${when(db.last_sweep.at)} (${db.last_sweep.outcome || "no outcome"})` : "none recorded (is a scheduler running?)" }),
        el("dt", { text: "Sweep recoveries in 24 h" }), el("dd", { text: String(db.sweep_recoveries_24h ?? "") }),
        el("dt", { text: "Database upkeep" }),
        el("dd", { class: db.upkeep && db.upkeep.autovacuum === false ? "status error" : "",
          text: db.upkeep ? `${db.upkeep.autovacuum ? "Autovacuum on." : "Autovacuum is off: nothing reclaims the row versions every notification leaves, so the tables that follow slow down for good:"} `
            + (db.upkeep.tables || []).map((t) => `${t.table}: ${t.live_rows} live, ${t.dead_rows} dead rows`).join("; ") : "" })),
      el("h3", { text: "Templates" }),
      el("p", { class: s.templates.ok ? "" : "status error", text: s.templates.ok ? "They load." : `Refused: ${s.templates.error}` }),
      el("p", { class: "muted", text: `Refreshed ${when(new Date().toISOString())}` }));
    const old = $("status-report");
    if (old) old.replaceWith(body);
    else $("view").append(body);
  };
  view(el("h2", { text: "Status" }), el("p", { class: "muted", text: "What tidings status shows, refreshed every 5 seconds." }));
  await draw();
  state.timer = setInterval(() => {
    if (document.visibilityState === "visible") draw().catch((e) => say(`Status: ${e.message}`, true));
  }, 5000);
}

async function changes() {
  const list = await api("GET", "/admin-changes?limit=200");
  view(el("h2", { text: "History" }),
    el("p", { class: "muted", text: "Every change made with an admin's session, newest first." }),
    list.length ? table(["When", "Who", "Change", "Answer", "Sent"], list.map((c) => el("tr", {},
      el("td", { text: when(c.at) }), el("td", { dir: "auto", text: c.actor }),
      el("td", { class: "wrap" }, el("code", { text: `${c.method} ${c.path}` })),
      el("td", { text: String(c.status) }),
      el("td", { class: "wrap" }, c.body ? el("details", {}, el("summary", { text: "body" }), el("pre", { class: "source", text: JSON.stringify(c.body, null, 2) })) : "")))) : el("p", { text: "No change yet." }));
}

// ---------------------------------------------------------------------------------------------
// Navigation

const SECTIONS = {
  automations: () => automations(),
  templates: (arg) => templates(arg),
  system: () => system(),
  outgoing: () => log("out"),
  incoming: () => log("in"),
  "set-aside": () => setAside(),
  suppressions: () => suppressions(),
  people: (arg) => people(arg),
  status: () => status(),
  history: () => changes(),
};

function view(...children) {
  $("view").replaceChildren(...children);
}

async function render() {
  clearInterval(state.timer);
  const [section, arg] = (location.hash.slice(1) || "automations").split("/");
  const show = SECTIONS[section] ? section : "automations";
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.section === show) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  const changed = state.section !== `${show}/${arg || ""}`;
  state.section = `${show}/${arg || ""}`;
  if (changed) say("");
  document.body.dataset.ready = "loading";
  try {
    await SECTIONS[show](arg ? decodeURIComponent(arg) : undefined);
    if (changed) {
      const heading = $("view").querySelector("h2");
      if (heading) { heading.tabIndex = -1; heading.focus(); }
    }
  } catch (e) {
    say(e.status === 403 ? "This console is for admins." : `Could not load: ${e.message}`, true);
  }
  document.body.dataset.ready = "yes";
}

// Sign in with a token in the URL fragment (as the messenger does), or with the session the
// messenger set.
async function signIn() {
  const m = location.hash.match(/token=([^&]+)/);
  if (!m) return;
  await api("POST", "/session", { token: decodeURIComponent(m[1]) });
  history.replaceState(null, "", location.pathname + location.search + "#automations");
}

async function main() {
  try {
    await signIn();
    state.me = await api("GET", "/me");
  } catch (e) {
    say("Not signed in: open the messenger link your application gave you, then come back.", true);
    document.body.dataset.ready = "signed-out";
    return;
  }
  $("who").textContent = state.me.name;
  if (!state.me.admin) {
    say("This console is for admins. Ask an admin to make you one.", true);
    document.body.dataset.ready = "not-admin";
    return;
  }
  window.addEventListener("hashchange", render);
  await render();
}

main();
