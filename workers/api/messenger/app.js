// The messenger: open conversations with unread counts, a total badge, a ping and a desktop
// notification on each new message for you, delivery icons, a composer and the preferences
// (SPEC D1, D4, D8, D10, P1-P5, E1-E3). Everything comes from the /me routes and the live event stream /me/events.
// Message text is only ever set as text, never as HTML.
"use strict";

const PRESETS = {
  quiet: { from_customers: "none", from_users: "none", followed_internal: false },
  lead: { from_customers: "all", from_users: "all", followed_internal: true },
  member: { from_customers: "mine", from_users: "followed", followed_internal: true },
};

// P1 is a permission: shown, never sent back.
const PERMISSIONS = {
  followed_projects: "only in projects I follow",
  all_projects: "in all projects",
};

const state = {
  me: null,
  conversations: [],
  unread: 0,
  open: null,
  pings: 0,
  events: 0,
  connected: false,
  muted: localStorage.getItem("tidings.muted") === "1",
  // The open conversation: its newest page, older pages loaded on scroll (oldest first),
  // the cursor of the next older page, and bodies read whole.
  view: null,
  earlier: [],
  earlierDeliveries: [],
  older: null,
  loadingOlder: false,
  whole: new Map(),
  audio: null,
  // The live stream, and the id of the last event it delivered (to resume after a
  // back/forward visit).
  source: null,
  lastEventId: null,
  // When the person last touched the page (pointer, key, wheel, touch).
  lastInput: Date.now(),
  // The desktop notification shown for each conversation (one each, replaced).
  notices: new Map(),
  // What was last announced to screen readers.
  announced: "",
};

// How long without input before the page stops reporting what it shows as seen.
const IDLE_MS = 5 * 60 * 1000;

// The one place that decides whether the open conversation is being read (SPEC D4, D10): it
// is on screen (nothing covers it: no panel over it), the page is visible and has focus, and
// the person has touched the page within IDLE_MS. Only then is its last message reported seen.
function canSee() {
  return state.open != null
    && !$("conversation").hidden
    && $("prefs").hidden
    && document.visibilityState === "visible"
    && document.hasFocus()
    && Date.now() - state.lastInput < IDLE_MS;
}

// Reports the open conversation seen once it can be seen again (focus back, panel closed,
// input after idling).
function seeAgain() {
  if (canSee()) refreshConversation(true).catch((e) => say(e.message));
}
// Read by the browser tests.
window.tidings = state;

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) if (c != null) node.append(c);
  return node;
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (r.status === 204) return null;
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    const e = new Error(data.error || r.statusText);
    e.status = r.status;
    throw e;
  }
  return data;
}

function say(text) {
  $("status").textContent = text;
}

function time(iso) {
  return iso ? new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : "";
}

// Sign in with the token in the URL fragment (it never reaches a server log), then forget it.
async function signIn() {
  const m = location.hash.match(/token=([^&]+)/);
  if (!m) return;
  await api("POST", "/session", { token: decodeURIComponent(m[1]) });
  history.replaceState(null, "", location.pathname + location.search);
}

// The ping's audio. Browsers block audio until the person clicks or presses a key on the
// page: until then the sound button says so, and one click (or any key or click) enables it.
function setUpAudio() {
  if (!window.AudioContext) return;
  state.audio = new AudioContext();
  state.audio.addEventListener("statechange", () => { renderMute(); tabs.tell(); });
}

function audible() {
  return Boolean(state.audio && state.audio.state === "running");
}

function unlockAudio() {
  if (state.audio && state.audio.state === "suspended") state.audio.resume().catch(() => {});
}

// The pages of this person open in this browser agree, over a BroadcastChannel, on which one
// pings and raises desktop notifications, so a message gives one ping however many tabs are
// open. Each page says when it opens, closes, and comes to the front or leaves it; the one
// that pings is the oldest page whose audio runs (else the oldest page). A page that has not
// been heard from for a while (closed without a word) no longer counts.
const tabs = {
  id: `${Date.now().toString(36).padStart(10, "0")}-${Math.random().toString(36).slice(2)}`,
  channel: null,
  peers: new Map(),
  // Pages repeat themselves this often; one not heard from in STALE_MS is gone. (Timers of
  // background pages can be delayed to once a minute.)
  EVERY_MS: 20000,
  STALE_MS: 150000,

  start(personId) {
    if (!window.BroadcastChannel || this.channel) return;
    this.channel = new BroadcastChannel(`tidings-${personId}`);
    this.channel.onmessage = (e) => this.heard(e.data || {});
    this.tell("hello");
    setInterval(() => this.tell(), this.EVERY_MS);
  },

  heard(m) {
    if (typeof m.id !== "string" || m.id === this.id) return;
    if (m.kind === "bye") {
      this.peers.delete(m.id);
      return;
    }
    this.peers.set(m.id, { front: Boolean(m.front), audible: Boolean(m.audible), at: Date.now() });
    // A new page learns of the others at once.
    if (m.kind === "hello") this.tell();
  },

  tell(kind) {
    if (!this.channel) return;
    this.channel.postMessage({ kind: kind || "here", id: this.id, front: inFront(), audible: audible() });
  },

  bye() {
    if (this.channel) this.channel.postMessage({ kind: "bye", id: this.id });
  },

  live() {
    const now = Date.now();
    for (const [id, p] of this.peers) if (now - p.at > this.STALE_MS) this.peers.delete(id);
    return [...this.peers.entries()];
  },

  // Whether this page is the one that pings and raises desktop notifications.
  leads() {
    const pages = this.live().concat([[this.id, { audible: audible() }]]);
    const sounding = pages.filter(([, p]) => p.audible);
    const from = sounding.length ? sounding : pages;
    return from.map(([id]) => id).sort()[0] === this.id;
  },

  // Whether any of the person's pages in this browser is in front of them.
  anyInFront() {
    return inFront() || this.live().some(([, p]) => p.front);
  },
};

// In front of the person: the page is visible and its window has focus.
function inFront() {
  return document.visibilityState === "visible" && document.hasFocus();
}

function ping() {
  state.pings += 1;
  document.body.dataset.pings = String(state.pings);
  if (state.muted || !audible()) return;
  const ctx = state.audio;
  const osc = ctx.createOscillator();
  const gain = ctx.createGain();
  osc.frequency.value = 880;
  gain.gain.setValueAtTime(0.15, ctx.currentTime);
  gain.gain.exponentialRampToValueAtTime(0.0001, ctx.currentTime + 0.3);
  osc.connect(gain).connect(ctx.destination);
  osc.start();
  osc.stop(ctx.currentTime + 0.3);
}

function renderMute() {
  const blocked = !state.muted && state.audio && !audible();
  $("mute").setAttribute("aria-pressed", String(state.muted));
  $("mute").classList.toggle("blocked", Boolean(blocked));
  $("mute-label").textContent = state.muted ? "Sound off"
    : blocked ? "Sound blocked by the browser: click to allow" : "Sound on";
  $("mute-icon").textContent = state.muted || blocked ? "\u00D7" : "\u266A";
  document.body.dataset.sound = state.muted ? "off" : blocked ? "blocked" : "on";
}

// The sound button: a click allows blocked audio; otherwise it mutes and unmutes.
function toggleSound() {
  if (!state.muted && state.audio && !audible()) {
    state.audio.resume().then(renderMute, () => say("The browser still blocks sound."));
    return;
  }
  state.muted = !state.muted;
  localStorage.setItem("tidings.muted", state.muted ? "1" : "0");
  renderMute();
}

// Desktop notifications (D10): asked for only from their button, never on load; on when the
// browser allows them and the person turned them on here.
function desktopOn() {
  return window.Notification !== undefined && Notification.permission === "granted" &&
    localStorage.getItem("tidings.desktop") === "1";
}

function renderDesktop() {
  const button = $("desktop");
  if (window.Notification === undefined) {
    button.hidden = true;
    return;
  }
  const permission = Notification.permission;
  const on = desktopOn();
  button.setAttribute("aria-pressed", String(on));
  $("desktop-label").textContent = permission === "denied"
    ? "Desktop notifications blocked by the browser"
    : permission === "default" ? "Turn on desktop notifications"
    : on ? "Desktop notifications on" : "Desktop notifications off";
  document.body.dataset.desktop = permission === "granted" ? (on ? "on" : "off") : permission;
}

async function toggleDesktop() {
  if (window.Notification === undefined) return;
  if (Notification.permission === "default") {
    const answer = await Notification.requestPermission();
    if (answer === "granted") localStorage.setItem("tidings.desktop", "1");
  } else if (Notification.permission === "granted") {
    localStorage.setItem("tidings.desktop", desktopOn() ? "0" : "1");
  } else {
    say("Desktop notifications are blocked for this site: allow them in the browser's site settings.");
  }
  renderDesktop();
}

// A desktop notification for a new message while none of the person's pages is in front:
// one per conversation, replacing the one before; a click opens the conversation.
function notifyDesktop(d) {
  if (!desktopOn() || tabs.anyInFront()) return;
  const before = state.notices.get(d.conversation_id);
  // An older message's event that comes late does not replace the newer one's notice.
  if (before && before.messageId > (d.message_id || 0)) return;
  if (before) before.close();
  const notice = new Notification(d.subject || "New message", {
    body: `${d.author}: ${d.excerpt || ""}`,
    tag: `tidings-conversation-${d.conversation_id}`,
    renotify: true,
    dir: "auto",
  });
  notice.messageId = d.message_id || 0;
  notice.onclick = () => {
    window.focus();
    notice.close();
    openConversation(d.conversation_id);
  };
  notice.onclose = () => {
    if (state.notices.get(d.conversation_id) === notice) state.notices.delete(d.conversation_id);
  };
  state.notices.set(d.conversation_id, notice);
}

// A conversation read (here or on another page) needs no desktop notification any more.
function clearNotice(conversationId) {
  const notice = state.notices.get(conversationId);
  if (notice) notice.close();
  state.notices.delete(conversationId);
}

// New messages outside the open conversation are announced politely to screen readers (the
// open conversation's list is a live region itself).
function announce(d) {
  const text = `New message from ${d.author} in ${d.subject}: ${d.excerpt || ""}`;
  // The same words twice in a row are announced again.
  state.announced = state.announced === text ? `${text}\u00A0` : text;
  $("announce").textContent = state.announced;
}

function renderBadge() {
  const badge = $("badge");
  badge.textContent = String(state.unread);
  badge.hidden = state.unread === 0;
  const words = state.unread === 0 ? "no unread messages" : `${state.unread} unread`;
  $("home").setAttribute("aria-label", `Messenger, ${words}`);
  document.title = state.unread > 0 ? `(${state.unread}) Messenger` : "Messenger";
}

function renderList() {
  state.conversations.sort((a, b) => b.last_message_id - a.last_message_id);
  const team = $("team");
  const customers = $("customers");
  team.replaceChildren();
  customers.replaceChildren();
  const isCustomer = state.me && state.me.kind === "customer";
  for (const c of state.conversations) {
    const unread = el("span", { class: "count" + (c.unread > 0 ? " unread" : ""), text: String(c.unread) });
    unread.setAttribute("aria-label", `${c.unread} unread`);
    // A read conversation shows no count.
    unread.hidden = !(c.unread > 0);
    const subject = el("span", { class: "subject", dir: "auto", text: c.subject });
    if (c.muted) subject.append(" ", el("span", { class: "tag muted", text: "muted" }));
    const button = el(
      "button",
      { type: "button", class: "conversation" + (state.open === c.conversation_id ? " open" : ""), "data-id": String(c.conversation_id) },
      subject,
      unread,
      el("span", { class: "excerpt", dir: "auto", text: c.last_excerpt || "" }),
    );
    button.addEventListener("click", () => openConversation(c.conversation_id));
    const item = el("li", {}, button);
    (c.from_customers && !isCustomer ? customers : team).append(item);
  }
  const showCustomers = !isCustomer && state.me && state.me.show_customer_conversations &&
    customers.childElementCount > 0;
  $("customers-heading").hidden = !showCustomers;
  customers.hidden = !showCustomers;
  renderBadge();
}

async function loadInbox() {
  const inbox = await api("GET", "/me/inbox");
  state.conversations = inbox.conversations;
  state.unread = inbox.unread;
  renderList();
}

// The full date and time, to the second, shown on hover.
function fullTime(iso) {
  return new Date(iso).toLocaleString([], {
    year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit",
  });
}

// One recipient's delivery: notified, seen, emailed, in the order they happened (to the
// millisecond: "Seen" and "Emailed" in one minute keep their order), each with its full time
// on hover.
function deliveryLine(d) {
  const steps = [];
  const step = (symbol, text, cls, at) => {
    const span = el("span", { class: "delivery " + cls, text: `${symbol} ${text}${at ? " " : ""}` });
    if (at) {
      span.append(el("time", { datetime: at, text: time(at) }));
      span.setAttribute("title", `${text} ${fullTime(at)}`);
    } else {
      span.setAttribute("title", text);
    }
    steps.push({ span, at: at ? Date.parse(at) : Infinity, order: steps.length });
  };
  step("\u2713", `Notified ${d.person}`, "notified", d.notified_at);
  if (d.seen_at) step("\u2713\u2713", `Seen by ${d.person}`, "seen", d.seen_at);
  if (d.email_reason === "bounced") step("\u26A0", `Email to ${d.person} bounced`, "bounced", d.emailed_at);
  else if (d.email_state === "sent") step("\u2709", `Emailed to ${d.person}`, "emailed", d.emailed_at);
  else if (d.email_state === "failed") step("\u26A0", `Email to ${d.person} failed`, "failed", null);
  else if (d.email_state === "pending" && d.email_reason &&
      (d.email_reason.startsWith("held:") || d.email_reason.startsWith("waiting for the conversation"))) {
    step("\u23F8", `Email to ${d.person} ${d.email_reason}`, "held", null);
  } else if (d.email_reason === "muted") step("\u2013", `Not emailed: ${d.person} muted the conversation`, "muted", null);
  steps.sort((a, b) => a.at - b.at || a.order - b.order);
  return el("li", {}, ...steps.map((s) => s.span));
}

function messageItem(m, deliveries) {
  const mine = state.me && m.author_id === state.me.id;
  // A customer's message is marked for users: a name alone could pass for a colleague's.
  const customer = m.author_kind === "customer" && state.me && state.me.kind !== "customer";
  const status = el("ul", { class: "deliveries", "aria-label": "Delivery" }, ...deliveries.map(deliveryLine));
  // What people write is laid out in its own direction (Arabic and Hebrew right to left).
  const body = el("p", { class: "body", dir: "auto", text: state.whole.get(m.id) ?? m.body });
  let more = null;
  if (m.truncated && !state.whole.has(m.id)) {
    more = el("button", { type: "button", class: "whole", text: "Show the whole message" });
    more.addEventListener("click", async () => {
      try {
        const full = await api("GET", `/me/messages/${m.id}`);
        state.whole.set(m.id, full.body);
        body.textContent = full.body;
        more.remove();
      } catch (e) {
        say(`Could not read it: ${e.message}`);
      }
    });
  }
  const files = (m.attachments || []).length
    ? el("ul", { class: "files", "aria-label": "Files" }, ...m.attachments.map(fileItem))
    : null;
  return el(
    "li",
    { class: "message" + (mine ? " mine" : "") + (m.internal ? " internal" : ""), "data-id": String(m.id) },
    el("div", { class: "meta" },
      el("strong", { dir: "auto", text: m.author }),
      customer ? el("span", { class: "tag customer", text: "Customer" }) : null,
      el("time", { datetime: m.created_at, title: fullTime(m.created_at), text: time(m.created_at) }),
      m.internal ? el("span", { class: "tag", text: "Internal" }) : null),
    body,
    more,
    files,
    status,
  );
}

const RASTER = ["image/png", "image/jpeg", "image/gif", "image/webp"];

function size(bytes) {
  if (bytes >= 1048576) return `${(bytes / 1048576).toFixed(1)} MB`;
  if (bytes >= 1024) return `${Math.round(bytes / 1024)} KB`;
  return `${bytes} bytes`;
}

// A type badge: the kind of file in a word (fonts without emoji show it too).
function icon(type, name) {
  if (type === "application/pdf") return "PDF";
  if (type === "message/rfc822") return "EML";
  if (type.startsWith("image/")) return "IMG";
  if (type === "application/zip") return "ZIP";
  const ext = (name.match(/\.([A-Za-z0-9]{1,4})$/) || [])[1];
  return ext ? ext.toUpperCase() : "FILE";
}

// A file under its message: a thumbnail for a raster image, a type icon otherwise; the link
// opens or downloads it (the server decides which, by type).
function fileItem(a) {
  const href = `/me/attachments/${a.id}`;
  const link = el("a", { href, class: "file", "data-attachment": String(a.id), target: "_blank", rel: "noopener" });
  if (RASTER.includes(a.content_type)) {
    link.append(el("img", { src: href, alt: a.name, class: "thumb", loading: "lazy" }));
  } else {
    link.append(el("span", { class: "file-icon", "aria-hidden": "true", text: icon(a.content_type, a.name) }));
  }
  link.append(el("span", { class: "file-name", text: a.name }), el("span", { class: "file-size", text: size(a.size) }));
  return el("li", {}, link);
}

function renderConversation(view, keepScroll) {
  state.view = view;
  $("subject").textContent = view.subject;
  renderMuted(view.muted);
  const list = $("messages");
  const fromBottom = list.scrollHeight - list.scrollTop;
  const byMessage = new Map();
  for (const d of view.deliveries.concat(state.earlierDeliveries)) {
    if (!byMessage.has(d.message_id)) byMessage.set(d.message_id, []);
    byMessage.get(d.message_id).push(d);
  }
  const first = view.messages.length ? view.messages[0].id : Infinity;
  const earlier = state.earlier.filter((m) => m.id < first);
  // With no older page loaded yet, the newest page's cursor says whether there is more.
  const cursor = state.earlier.length ? state.older : view.older;
  $("older").hidden = cursor == null;
  list.replaceChildren(...earlier.concat(view.messages).map((m) => messageItem(m, byMessage.get(m.id) || [])));
  if (keepScroll) list.scrollTop = list.scrollHeight - fromBottom;
  else list.lastElementChild && list.lastElementChild.scrollIntoView({ block: "nearest" });
}

// Older messages, a page at a time: by the button, or on scrolling to the top of the list.
async function loadOlder() {
  const id = state.open;
  const cursor = state.earlier.length ? state.older : state.view && state.view.older;
  if (id == null || cursor == null || state.loadingOlder) return;
  state.loadingOlder = true;
  try {
    const page = await api("GET", `/me/conversations/${id}?before=${cursor}`);
    if (state.open !== id) return;
    state.earlier = page.messages.concat(state.earlier);
    state.earlierDeliveries = state.earlierDeliveries.concat(page.deliveries);
    state.older = page.older;
    renderConversation(state.view, true);
  } catch (e) {
    say(`Could not load older messages: ${e.message}`);
  } finally {
    state.loadingOlder = false;
  }
}

// A1: the person's pause. The server holds emails and leaves pings out meanwhile; the page
// shows until when. A2: outside working hours the same holds, and the line says so when no
// pause is on.
function renderDnd(until) {
  const end = until ? new Date(until) : null;
  const on = end !== null && end > new Date();
  document.body.dataset.dnd = on ? "on" : "off";
  const offHours = state.offHoursUntil && new Date(state.offHoursUntil) > new Date();
  document.body.dataset.hours = offHours ? "outside" : "inside";
  $("dnd-status").textContent = on ? `Paused until ${fullTime(until)}`
    : offHours ? `Outside working hours until ${fullTime(state.offHoursUntil)}` : "";
  if (!on) {
    $("dnd").value = "off";
    $("dnd-until").hidden = true;
  } else if ($("dnd").value === "off") {
    $("dnd").value = "custom";
  }
  clearTimeout(state.dndTimer);
  if (on) state.dndTimer = setTimeout(() => renderDnd(null), Math.min(end - new Date(), 2 ** 31 - 1));
  else if (offHours) {
    state.dndTimer = setTimeout(() => loadAttention(),
      Math.min(new Date(state.offHoursUntil) - new Date() + 1000, 2 ** 31 - 1));
  }
}

// The person's attention settings: the pause, and whether now is outside working hours.
function renderAttention(a) {
  state.offHoursUntil = a ? a.outside_hours_until : null;
  renderDnd(a ? a.dnd_until : null);
}

function loadAttention() {
  return api("GET", "/me/attention").then(renderAttention, () => renderAttention(null));
}

const DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

function describeHours(h) {
  if (!h) return "none";
  const names = h.days.map((d) => d[0].toUpperCase() + d.slice(1)).join(", ");
  return `${names} ${h.start}–${h.end} ${h.time_zone}`;
}

// A2 in the preferences panel: the organisation's hours, none, or one's own.
function renderHours(a) {
  state.hoursSaved = JSON.stringify(a.working_hours);
  const own = a.working_hours && typeof a.working_hours === "object" ? a.working_hours : null;
  $("hours_mode").value = a.working_hours === "none" ? "none" : own ? "own" : "default";
  $("hours_mode").options[0].textContent = a.working_hours === null && a.working_hours_in_effect
    ? `The organisation's (${describeHours(a.working_hours_in_effect)})` : "The organisation's";
  const shown = own || a.working_hours_in_effect
    || { days: DAYS.slice(0, 5), start: "09:00", end: "17:00", time_zone: Intl.DateTimeFormat().resolvedOptions().timeZone };
  for (const box of document.querySelectorAll("#hours_own [data-day]")) box.checked = shown.days.includes(box.dataset.day);
  $("hours_start").value = shown.start;
  $("hours_end").value = shown.end;
  $("hours_zone").value = shown.time_zone;
  $("hours_own").hidden = $("hours_mode").value !== "own";
  $("hours_status").textContent = a.outside_hours_until
    ? `Now outside working hours, until ${a.outside_hours_until_local}.`
    : a.working_hours_in_effect ? "Now inside working hours." : "";
  if (!$("zones").childElementCount && Intl.supportedValuesOf) {
    for (const zone of Intl.supportedValuesOf("timeZone")) $("zones").append(el("option", { value: zone }));
  }
}

// The working hours the panel shows, as the API takes them.
function chosenHours() {
  const mode = $("hours_mode").value;
  if (mode === "default") return null;
  if (mode === "none") return "none";
  return {
    days: [...document.querySelectorAll("#hours_own [data-day]")].filter((b) => b.checked).map((b) => b.dataset.day),
    start: $("hours_start").value,
    end: $("hours_end").value,
    time_zone: $("hours_zone").value.trim(),
  };
}

async function setDnd(until) {
  const r = await api("PUT", "/me/attention", { dnd_until: until ? until.toISOString() : null });
  renderAttention(r);
  say(r.dnd_until ? `Do not disturb until ${fullTime(r.dnd_until)}: emails wait, no pings.`
    : "Do not disturb is off; held emails go out now.");
}

function chooseDnd() {
  const choice = $("dnd").value;
  $("dnd-until").hidden = choice !== "custom";
  if (choice === "custom") { $("dnd-until").focus(); return Promise.resolve(); }
  if (choice === "off") return setDnd(null);
  const until = new Date();
  if (choice === "1h") until.setHours(until.getHours() + 1);
  else { until.setDate(until.getDate() + 1); until.setHours(8, 0, 0, 0); }
  return setDnd(until);
}

// A4: the open conversation's mute switch.
function renderMuted(muted) {
  const button = $("conversation-mute");
  button.setAttribute("aria-pressed", muted ? "true" : "false");
  button.textContent = muted ? "Muted: unmute" : "Mute this conversation";
}

async function toggleConversationMute() {
  const id = state.open;
  if (id == null || !state.view) return;
  const muted = !state.view.muted;
  await api(muted ? "PUT" : "DELETE", `/me/conversations/${id}/mute`);
  if (state.open !== id) return;
  state.view.muted = muted;
  renderMuted(muted);
  const c = state.conversations.find((x) => x.conversation_id === id);
  if (c) c.muted = muted;
  renderList();
  say(muted ? "Muted: no ping, desktop notification or email about this conversation."
    : "Unmuted.");
}

async function refreshConversation(markSeen) {
  const id = state.open;
  if (id == null) return;
  const view = await api("GET", `/me/conversations/${id}`);
  if (state.open !== id) return;
  renderConversation(view, false);
  const last = view.messages[view.messages.length - 1];
  if (markSeen && last && canSee()) {
    // Seen up to the last message shown: this is what suppresses its email (D4).
    await api("PUT", `/me/conversations/${id}/seen`, { message_id: last.id });
  }
}

async function openConversation(id) {
  if (state.open !== id) {
    state.earlier = [];
    state.earlierDeliveries = [];
    state.older = null;
    state.whole = new Map();
  }
  state.open = id;
  clearNotice(id);
  $("prefs").hidden = true;
  $("conversation").hidden = false;
  document.body.classList.add("reading");
  renderList();
  try {
    await refreshConversation(true);
    $("body").focus();
  } catch (e) {
    say(e.status === 403 ? "You may not see this conversation." : `Could not open it: ${e.message}`);
  }
}

function closeConversation() {
  const closed = state.open;
  state.open = null;
  $("conversation").hidden = true;
  $("empty").hidden = !$("prefs").hidden;
  document.body.classList.remove("reading");
  renderList();
  // Focus goes back to the conversation just left, in the list.
  const item = closed != null && document.querySelector(`.conversation[data-id="${closed}"]`);
  if (item) item.focus();
}

// Signing out revokes the session everywhere (every page's stream ends) and clears this page.
async function signOut() {
  try {
    await api("DELETE", "/session");
  } catch (e) {
    say(`Could not sign out: ${e.message}`);
    return;
  }
  if (state.source) state.source.close();
  state.source = null;
  state.connected = false;
  state.open = null;
  for (const id of [...state.notices.keys()]) clearNotice(id);
  tabs.bye();
  state.conversations = [];
  state.unread = 0;
  $("team").replaceChildren();
  $("customers").replaceChildren();
  $("messages").replaceChildren();
  $("conversation").hidden = true;
  $("prefs").hidden = true;
  $("who").textContent = "";
  renderBadge();
  document.body.classList.remove("reading");
  document.body.dataset.live = "off";
  document.body.dataset.ready = "signed-out";
  say("Signed out. Open the messenger link your application gave you to come back.");
}

// Files chosen for the next message: by picking, drag and drop, or paste.
state.pending = [];

function renderPending() {
  const list = $("pending");
  list.replaceChildren(...state.pending.map((f, i) => {
    const remove = el("button", { type: "button", class: "remove", text: "Remove" });
    remove.setAttribute("aria-label", `Remove ${f.name}`);
    remove.addEventListener("click", () => { state.pending.splice(i, 1); renderPending(); });
    return el("li", {}, el("span", { text: `${f.name} (${size(f.size)})` }), remove);
  }));
  list.hidden = state.pending.length === 0;
}

function addFiles(files) {
  for (const f of files) {
    if (state.me.attachment_max && f.size > state.me.attachment_max) {
      say(`${f.name} is ${size(f.size)}: files are at most ${size(state.me.attachment_max)}.`);
      continue;
    }
    state.pending.push(f);
  }
  renderPending();
}

// A message with files goes as multipart/form-data through XMLHttpRequest, whose upload
// progress fetch does not report.
function upload(path, message, files) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    form.append("message", JSON.stringify(message));
    for (const f of files) form.append("file", f, f.name);
    const xhr = new XMLHttpRequest();
    const bar = $("progress");
    bar.hidden = false;
    bar.value = 0;
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = e.loaded / e.total; };
    xhr.onload = () => {
      bar.hidden = true;
      let data = {};
      try { data = JSON.parse(xhr.responseText); } catch (_) { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else reject(new Error(data.error || `HTTP ${xhr.status}`));
    };
    xhr.onerror = () => { bar.hidden = true; reject(new Error("the upload failed")); };
    xhr.open("POST", path);
    xhr.send(form);
  });
}

async function send(event) {
  event.preventDefault();
  const text = $("body").value;
  if (state.open == null) return;
  if (!text.trim() && state.pending.length === 0) {
    say("Write a message or attach a file first.");
    $("body").focus();
    return;
  }
  const internal = state.me.kind !== "customer" &&
    document.querySelector("input[name=visibility]:checked").value === "internal";
  const path = `/me/conversations/${state.open}/messages`;
  try {
    if (state.pending.length) await upload(path, { body: text, internal }, state.pending);
    else await api("POST", path, { body: text, internal });
    $("body").value = "";
    state.pending = [];
    renderPending();
    await refreshConversation(false);
  } catch (e) {
    say(`Not sent: ${e.message}`);
  }
}

function upsert(d) {
  let c = state.conversations.find((x) => x.conversation_id === d.conversation_id);
  if (!c) return false;
  // People's posts are dispatched ahead of bulk work (emailed replies), so an older message's
  // event can come after a newer one's: the list keeps the newest message's excerpt.
  const newest = (d.message_id || 0) >= c.last_message_id;
  c.last_message_id = Math.max(c.last_message_id, d.message_id || 0);
  if (d.excerpt && newest) c.last_excerpt = d.excerpt;
  return true;
}

// Updates of the counts and the list run one after another, in the order the events came:
// an inbox read that one event started finishes before the next event's counts are applied,
// so an older snapshot never overwrites newer counts (each event carries absolute counts).
state.queue = Promise.resolve();
function inOrder(work) {
  const done = state.queue.then(work);
  state.queue = done.catch((err) => say(`Update failed: ${err.message}`));
  return done;
}

// An event handler: `now` runs at once (the ping, the desktop notification, the
// announcement), `handler` in order with the other updates.
function onEvent(kind, handler, now) {
  return (e) => {
    state.events += 1;
    if (e.lastEventId) state.lastEventId = e.lastEventId;
    let data = {};
    try { data = JSON.parse(e.data); } catch (_) { return; }
    if (now) now(data);
    inOrder(() => handler(data));
  };
}

function applyCounts(d) {
  if (!d.unread) return;
  state.unread = d.unread.total;
  const c = state.conversations.find((x) => x.conversation_id === d.conversation_id);
  if (c) c.unread = d.unread.conversation;
}

function connect(resume) {
  // A page back from the back/forward cache resumes after the last event it had (an
  // EventSource cannot send Last-Event-ID itself the first time).
  const url = resume && state.lastEventId
    ? `/me/events?last_event_id=${encodeURIComponent(state.lastEventId)}`
    : "/me/events";
  const source = new EventSource(url);
  state.source = source;
  let opened = Boolean(resume && state.lastEventId);
  // The inbox is read once the stream runs, so nothing falls between the two (a reconnect
  // resumes with Last-Event-ID instead); a stream that cannot start does not keep the list
  // from showing.
  const firstRead = () => {
    if (opened) return;
    opened = true;
    inOrder(loadInbox).then(ready, (e) => say(e.message));
  };
  source.onopen = () => {
    state.connected = true;
    document.body.dataset.live = "on";
    firstRead();
  };
  source.onerror = () => {
    state.connected = false;
    document.body.dataset.live = "off";
    firstRead();
    // The browser reconnects by itself (with Last-Event-ID) unless the server refused the
    // stream (a 429, a signed-out session): then start a new one later, reading the inbox again.
    if (source.readyState === EventSource.CLOSED && state.source === source) {
      setTimeout(() => { if (state.source === source) connect(); }, 5000);
    }
  };
  source.addEventListener("notification", onEvent("notification", async (d) => {
    applyCounts(d);
    if (!upsert(d)) await loadInbox();
    renderList();
    if (state.open === d.conversation_id) await refreshConversation(true);
  }, (d) => {
    if (d.ping && d.author_id !== state.me.id) {
      if (tabs.leads()) {
        ping();
        notifyDesktop(d);
      }
      if (state.open !== d.conversation_id || !canSee()) announce(d);
    }
  }));
  source.addEventListener("seen", onEvent("seen", (d) => {
    applyCounts(d);
    if (d.unread && d.unread.conversation === 0) clearNotice(d.conversation_id);
    renderList();
  }));
  source.addEventListener("delivery", onEvent("delivery", async (d) => {
    if (state.open === d.conversation_id) await refreshConversation(false);
  }));
  source.addEventListener("conversation", onEvent("conversation", async (d) => {
    // Posting counts as seeing what came before (D4): the counts come with it.
    applyCounts(d);
    if (!upsert(d)) await loadInbox();
    renderList();
    if (state.open === d.conversation_id) await refreshConversation(false);
  }));
  source.addEventListener("signed_out", onEvent("signed_out", () => {
    source.close();
    state.connected = false;
    document.body.dataset.live = "off";
    document.body.dataset.ready = "signed-out";
    say("Signed out: open the messenger link your application gave you.");
  }));
  source.addEventListener("reset", onEvent("reset", async () => {
    await loadInbox();
    if (state.open != null) await refreshConversation(false);
  }));
}

async function openPrefs() {
  // The panel covers the conversation: nothing under it is being read.
  $("conversation").hidden = true;
  $("empty").hidden = true;
  $("prefs").hidden = false;
  const [prefs, attention] = await Promise.all([api("GET", "/me/preferences"), api("GET", "/me/attention")]);
  state.waitsForQuiet = attention.waits_for_quiet;
  $("wait_for_quiet").checked = attention.waits_for_quiet;
  renderHours(attention);
  for (const [name, value] of Object.entries(prefs)) {
    const input = $(name);
    if (!input) continue;
    if (input.type === "checkbox") input.checked = Boolean(value);
    else if ("value" in input) input.value = value;
    else input.textContent = PERMISSIONS[value] || value;
  }
  $("show_customer_conversations").focus();
}

async function savePrefs(event) {
  event.preventDefault();
  const patch = {};
  for (const input of $("prefs-form").querySelectorAll("select[name], input[type=checkbox][name]")) {
    patch[input.name] = input.type === "checkbox" ? input.checked : input.value;
  }
  try {
    const saved = await api("PATCH", "/me/preferences", patch);
    // A3 is an attention setting: changed only when the box was changed.
    const waits = $("wait_for_quiet").checked;
    if (waits !== state.waitsForQuiet) {
      state.waitsForQuiet = (await api("PUT", "/me/attention", { wait_for_quiet: waits })).waits_for_quiet;
    }
    // A2 likewise: sent only when changed.
    const hours = chosenHours();
    if (JSON.stringify(hours) !== state.hoursSaved) {
      const a = await api("PUT", "/me/attention", { working_hours: hours });
      renderHours(a);
      renderAttention(a);
    }
    state.me.show_customer_conversations = saved.show_customer_conversations;
    say("Preferences saved.");
    await inOrder(loadInbox);
  } catch (e) {
    say(`Not saved: ${e.message}`);
  }
}

// Closing the panel shows again what it covered: the open conversation (which is then read, if
// the page can be seen), or the empty pane.
function closePrefs() {
  $("prefs").hidden = true;
  $("empty").hidden = state.open != null;
  if (state.open != null) {
    $("conversation").hidden = false;
    seeAgain();
    $("body").focus();
  } else {
    $("prefs-open").focus();
  }
}

function applyPreset(name) {
  for (const [field, value] of Object.entries(PRESETS[name])) {
    const input = $(field);
    if (input.type === "checkbox") input.checked = value;
    else input.value = value;
  }
  say(`Preset applied: ${name}. Save to keep it.`);
}

// The first load is done: the list is shown and the stream runs (or retries).
function ready() {
  document.body.dataset.ready = "yes";
}

async function main() {
  setUpAudio();
  renderMute();
  renderDesktop();
  // The browser's site settings can change the permission while the page is open.
  if (navigator.permissions) {
    navigator.permissions.query({ name: "notifications" })
      .then((status) => { status.onchange = renderDesktop; }, () => {});
  }
  document.addEventListener("pointerdown", unlockAudio, { capture: true });
  document.addEventListener("keydown", unlockAudio, { capture: true });
  $("mute").addEventListener("click", toggleSound);
  $("desktop").addEventListener("click", () => toggleDesktop().catch((e) => say(e.message)));
  $("dnd").addEventListener("change", () => chooseDnd().catch((e) => say(`Could not change do not disturb: ${e.message}`)));
  $("dnd-until").addEventListener("change", () => {
    const value = $("dnd-until").value;
    if (value) setDnd(new Date(value)).catch((e) => say(`Could not change do not disturb: ${e.message}`));
  });
  $("conversation-mute").addEventListener("click",
    () => toggleConversationMute().catch((e) => say(`Could not change the mute: ${e.message}`)));
  $("home").addEventListener("click", closeConversation);
  $("older").addEventListener("click", () => loadOlder());
  $("messages").addEventListener("scroll", () => {
    if ($("messages").scrollTop < 40) loadOlder();
  }, { passive: true });
  $("back").addEventListener("click", closeConversation);
  $("composer").addEventListener("submit", send);
  $("attach").addEventListener("change", (e) => { addFiles(e.target.files); e.target.value = ""; });
  $("composer").addEventListener("dragover", (e) => { e.preventDefault(); });
  $("composer").addEventListener("drop", (e) => {
    e.preventDefault();
    if (e.dataTransfer && e.dataTransfer.files.length) addFiles(e.dataTransfer.files);
  });
  $("body").addEventListener("paste", (e) => {
    const files = e.clipboardData ? [...e.clipboardData.files] : [];
    if (files.length) { e.preventDefault(); addFiles(files); }
  });
  $("body").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) $("composer").requestSubmit();
  });
  $("prefs-open").addEventListener("click", () => openPrefs().catch((e) => say(e.message)));
  $("prefs-close").addEventListener("click", closePrefs);
  $("sign-out").addEventListener("click", signOut);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !$("prefs").hidden) closePrefs();
  });
  for (const kind of ["pointerdown", "keydown", "wheel", "touchstart"]) {
    document.addEventListener(kind, () => {
      const idle = Date.now() - state.lastInput >= IDLE_MS;
      state.lastInput = Date.now();
      if (idle) seeAgain();
    }, { passive: true, capture: true });
  }
  window.addEventListener("focus", () => { tabs.tell(); seeAgain(); });
  window.addEventListener("blur", () => tabs.tell());
  // A page left for another stays in the back/forward cache: its stream closes with it and
  // reopens, resuming, when it is shown again, so visits never pile up connections.
  window.addEventListener("pagehide", () => {
    tabs.bye();
    if (state.source) state.source.close();
    state.source = null;
    state.connected = false;
    document.body.dataset.live = "off";
  });
  window.addEventListener("pageshow", (e) => {
    if (e.persisted && state.me && !state.source) {
      tabs.tell("hello");
      connect(true);
    }
  });
  $("prefs-form").addEventListener("submit", savePrefs);
  $("hours_mode").addEventListener("change", () => { $("hours_own").hidden = $("hours_mode").value !== "own"; });
  for (const b of document.querySelectorAll("[data-preset]")) {
    b.addEventListener("click", () => applyPreset(b.dataset.preset));
  }
  document.addEventListener("visibilitychange", () => { tabs.tell(); seeAgain(); });
  try {
    await signIn();
    state.me = await api("GET", "/me");
  } catch (e) {
    say("Not signed in: open the messenger link your application gave you.");
    document.body.dataset.ready = "signed-out";
    return;
  }
  const customer = state.me.kind === "customer";
  document.body.classList.toggle("customer", customer);
  $("who").textContent = state.me.name;
  $("visibility").hidden = customer;
  $("prefs-open").hidden = customer;
  $("admin-link").hidden = !state.me.admin;
  loadAttention();
  if (customer) $("team-heading").textContent = "Your conversations";
  tabs.start(state.me.id);
  connect();
}

main();
