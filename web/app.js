// The owner's page: sign in, see devices and where they are, send commands, follow what
// happens through the events long poll. Talks only to this server; the session is an
// HttpOnly cookie the script never sees, and every change carries the CSRF token.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const NAMES = { r: "Ring", l: "Lock", m: "Message", t: "Track", e: "Erase" };

  let csrf = null;
  let hasPassword = true; // accounts of an identity provider's users have none
  let config = { tiles: null, signup: true };
  let devices = [];
  let selectedId = null;
  let map = null;
  let generation = 0; // bumps on every device switch or sign-out; stale polls stop themselves
  let refreshTimer = null;
  let tickTimer = null;
  const activity = new Map(); // seq → list item

  // --- Talking to the server ---

  class ApiError extends Error {
    constructor(status, body, retryAfter) {
      super((body && body.message) || ("The server answered " + status));
      this.status = status;
      this.errno = body && body.errno;
      this.retryAfter = retryAfter;
    }
  }

  // `background`: a refresh the page makes by itself, which must not keep the session from
  // idling out (the server does not count it as a use).
  async function api(method, path, body, background) {
    const headers = {};
    if (background) headers["X-Wmf-Background"] = "1";
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (csrf && method !== "GET") headers["X-CSRF-Token"] = csrf;
    const response = await fetch(path, {
      method: method,
      headers: headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
    });
    const text = await response.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = null; }
    }
    if (!response.ok) {
      throw new ApiError(response.status, data, response.headers.get("Retry-After"));
    }
    return data;
  }

  // --- Messages for people ---

  function say(text) {
    $("status").textContent = text;
  }

  function alertText(text) {
    const box = $("alert");
    box.textContent = text;
    box.hidden = !text;
  }

  function describe(error) {
    if (error.status === 429) {
      const secs = parseInt(error.retryAfter || "0", 10);
      if (secs > 0) {
        const at = new Date(Date.now() + secs * 1000).toLocaleTimeString();
        return "Too many attempts. Wait " + secs + " s (until " + at + ") and try again.";
      }
      return "Too many attempts. Wait a little and try again.";
    }
    if (error instanceof ApiError) return error.message;
    return "The server cannot be reached. Check the connection and try again.";
  }

  // Disables `button` until a 429's Retry-After has passed, counting down on it.
  function holdOff(button, error) {
    const secs = parseInt(error.retryAfter || "0", 10);
    if (error.status !== 429 || !(secs > 0)) return;
    const label = button.dataset.label || button.textContent;
    button.dataset.label = label;
    const until = Date.now() + secs * 1000;
    button.disabled = true;
    const step = () => {
      const left = Math.ceil((until - Date.now()) / 1000);
      if (left <= 0) {
        button.disabled = false;
        button.textContent = label;
        return;
      }
      button.textContent = label + " (" + left + " s)";
      setTimeout(step, 1000);
    };
    step();
  }

  function signedOut(error) {
    return error instanceof ApiError && error.status === 401;
  }

  function ago(ms) {
    if (!ms) return "never";
    const secs = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (secs < 10) return "just now";
    if (secs < 90) return secs + " s ago";
    const mins = Math.round(secs / 60);
    if (mins < 90) return mins + " min ago";
    const hours = Math.round(mins / 60);
    if (hours < 36) return hours + " h ago";
    return Math.round(hours / 24) + " days ago";
  }

  function clock(ms) {
    const d = new Date(ms);
    const today = new Date();
    return d.toDateString() === today.toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
  }

  // --- Signing in and out ---

  function showSignIn(reason) {
    generation++;
    csrf = null;
    clearInterval(refreshTimer);
    clearInterval(tickTimer);
    $("app").hidden = true;
    $("who").hidden = true;
    $("signin").hidden = false;
    $("sign-up").hidden = !config.signup;
    if (config.provider) {
      $("provider-name").textContent = config.provider.name;
      $("provider-row").hidden = false;
    }
    if (reason) alertText(reason);
    $("email").focus();
  }

  function showApp(session) {
    csrf = session.csrf;
    hasPassword = session.has_password !== false;
    alertText("");
    $("signin").hidden = true;
    $("app").hidden = false;
    $("who").hidden = false;
    $("who-email").textContent = session.email;
    $("password").value = "";
    if (!map) {
      map = new window.FoxMap($("map"), $("map-caption"));
      map.setTiles(config.tiles);
    }
    loadDevices(true);
    refreshTimer = setInterval(() => loadDevices(false), 15000);
    tickTimer = setInterval(renderTimes, 10000);
    $("main").focus();
  }

  function credentials() {
    const email = $("email").value.trim();
    const password = $("password").value;
    if (!email || email.indexOf("@") < 1) {
      $("email").setAttribute("aria-invalid", "true");
      $("email").focus();
      throw new Error("Enter the email address of your account.");
    }
    $("email").removeAttribute("aria-invalid");
    if (password.length < 8) {
      $("password").setAttribute("aria-invalid", "true");
      $("password").focus();
      throw new Error("The password has at least 8 characters.");
    }
    $("password").removeAttribute("aria-invalid");
    return { email: email, password: password };
  }

  async function signIn(event) {
    event.preventDefault();
    const button = $("sign-in");
    try {
      const body = credentials();
      say("Signing in…");
      showApp(await api("POST", "/1/web/session", body));
      say("Signed in.");
    } catch (error) {
      say("");
      alertText(error instanceof ApiError || error instanceof TypeError ? describe(error) : error.message);
      if (error instanceof ApiError) holdOff(button, error);
    }
  }

  async function signUp() {
    const button = $("sign-up");
    try {
      const body = credentials();
      say("Creating the account…");
      await api("POST", "/1/accounts", body);
      showApp(await api("POST", "/1/web/session", body));
      say("Account created and signed in.");
    } catch (error) {
      say("");
      alertText(error instanceof ApiError || error instanceof TypeError ? describe(error) : error.message);
      if (error instanceof ApiError) holdOff(button, error);
    }
  }

  async function signOut() {
    try {
      await api("DELETE", "/1/web/session");
    } catch (_) {
      // Signed out already, or unreachable: the page forgets the session either way.
    }
    selectedId = null;
    showSignIn("");
    say("Signed out.");
  }

  // --- Devices ---

  async function loadDevices(first) {
    try {
      const answer = await api("GET", "/1/devices", undefined, !first);
      devices = answer.devices;
      renderDevices();
      if ((first || !selectedId) && devices.length && !devices.some((d) => d.id === selectedId)) {
        selectDevice(devices[0].id, false);
      }
    } catch (error) {
      if (signedOut(error)) return showSignIn("Your session has ended. Sign in again.");
      say(describe(error));
    }
  }

  function stateBadges(device) {
    const s = device.state || {};
    const list = [];
    list.push(s.parked ? ["Connected now", "on"] : s.online ? ["Online", "on"] : ["Offline", ""]);
    if (s.ringing) list.push(["Ringing", "warn"]);
    if (s.locked) list.push(["Locked", "warn"]);
    if (s.tracking) list.push(["Tracking", "warn"]);
    if (s.erased) list.push(["Erased", "bad"]);
    return list;
  }

  function renderDevices() {
    const list = $("devices");
    list.textContent = "";
    $("no-devices").hidden = devices.length > 0;
    devices.forEach((device) => {
      const item = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.className = "device-button";
      button.dataset.id = device.id;
      button.setAttribute("aria-current", device.id === selectedId ? "true" : "false");
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = device.name;
      const meta = document.createElement("span");
      meta.className = "meta";
      meta.dataset.seen = String(device.last_exchange_ms || 0);
      meta.dataset.states = stateBadges(device).map((b) => b[0]).join(", ");
      meta.textContent = meta.dataset.states + " · last seen " + ago(device.last_exchange_ms);
      button.append(name, meta);
      button.addEventListener("click", () => selectDevice(device.id, true));
      item.append(button);
      list.append(item);
    });
  }

  function renderTimes() {
    document.querySelectorAll(".device-list .meta").forEach((meta) => {
      meta.textContent = meta.dataset.states + " · last seen " + ago(parseInt(meta.dataset.seen, 10));
    });
    const device = devices.find((d) => d.id === selectedId);
    if (device) renderSeen(device);
  }

  function renderSeen(device) {
    const seen = device.last_exchange_ms;
    $("device-seen").textContent = seen
      ? "Last contact " + ago(seen) + " (" + clock(seen) + ")"
      : "The phone has not contacted the server yet.";
  }

  function selectDevice(id, focus) {
    if (id === selectedId) return;
    selectedId = id;
    generation++;
    activity.clear();
    $("activity").textContent = "";
    $("device").hidden = false;
    $("activity-card").hidden = false;
    renderDevices();
    loadDetail();
    pollEvents(generation, id);
    if (focus) $("device-name").focus();
  }

  async function loadDetail(background) {
    const id = selectedId;
    if (!id) return;
    try {
      const device = await api("GET", "/1/devices/" + encodeURIComponent(id), undefined, background);
      if (id !== selectedId) return;
      const index = devices.findIndex((d) => d.id === id);
      if (index >= 0) devices[index] = device; else devices.push(device);
      renderDevices();
      renderDetail(device);
    } catch (error) {
      if (signedOut(error)) return showSignIn("Your session has ended. Sign in again.");
      say(describe(error));
    }
  }

  function renderDetail(device) {
    $("device-name").textContent = device.name;
    $("device-name").tabIndex = -1;
    const state = $("device-state");
    state.textContent = "";
    stateBadges(device).forEach((b) => {
      const badge = document.createElement("span");
      badge.className = "badge " + b[1];
      badge.textContent = b[0];
      state.append(badge);
    });
    renderSeen(device);
    const newestFirst = [];
    if (device.last_position) newestFirst.push(device.last_position);
    (device.previous_positions || []).forEach((p) => newestFirst.push(p));
    const list = $("positions");
    list.textContent = "";
    if (!newestFirst.length) {
      const item = document.createElement("li");
      item.textContent = "No position yet: press “Start tracking” to ask the phone.";
      list.append(item);
    }
    newestFirst.forEach((p, i) => {
      const item = document.createElement("li");
      const acc = typeof p.acc === "number" ? " ±" + Math.round(p.acc) + " m" : "";
      item.textContent = (i === 0 ? "Latest: " : "") + clock(p.time_ms) + " (" + ago(p.time_ms) + ") · " +
        p.lat.toFixed(5) + ", " + p.lon.toFixed(5) + acc;
      list.append(item);
    });
    // The map numbers points oldest first, so the list's last item is point 1.
    list.setAttribute("reversed", "");
    map.setTrack(newestFirst.slice().reverse());
    $("erase-name").textContent = device.name;
    $("erase-name-2").textContent = device.name;
  }

  // --- Live updates ---

  async function pollEvents(mine, id) {
    let since = 0;
    let failures = 0;
    while (mine === generation) {
      try {
        const path = "/1/devices/" + encodeURIComponent(id) + "/events?since=" + since + "&wait=" + (since ? 25 : 0);
        const answer = await api("GET", path, undefined, true);
        if (mine !== generation) return;
        failures = 0;
        since = answer.next;
        let reload = answer.truncated;
        answer.events.forEach((event) => { if (showEvent(event)) reload = true; });
        if (reload) loadDetail(true);
      } catch (error) {
        if (mine !== generation) return;
        if (signedOut(error)) return showSignIn("Your session has ended. Sign in again.");
        if (error instanceof ApiError && error.status === 404) return;
        failures++;
        say("Lost contact with the server; retrying…");
        await new Promise((resolve) => setTimeout(resolve, Math.min(30000, 1000 * failures)));
      }
    }
  }

  function commandLabel(command, args) {
    const name = NAMES[command] || command;
    if ((command === "r" || command === "t") && args && args.d === 0) {
      return command === "r" ? "Stop ringing" : "Stop tracking";
    }
    if ((command === "r" || command === "t") && args && args.d) {
      return name + " for " + Math.round(args.d / 60) + " min";
    }
    return name;
  }

  function activityItem(seq, label) {
    let item = activity.get(seq);
    if (!item) {
      item = document.createElement("li");
      item.dataset.seq = String(seq);
      item.dataset.label = label;
      activity.set(seq, item);
      $("activity").prepend(item);
    }
    return item;
  }

  function setActivity(item, text, kind) {
    item.textContent = item.dataset.label + ": " + text;
    item.className = kind || "";
    item.dataset.status = kind || text;
  }

  // Shows one event; returns whether the device's details should be reloaded.
  function showEvent(event) {
    const at = clock(event.at_ms);
    const name = () => $("device-name").textContent;
    switch (event.type) {
      case "command_queued":
        setActivity(activityItem(event.seq, commandLabel(event.command, event.args)), "waiting for the phone (" + at + ")", "queued");
        return false;
      case "command_sent":
        event.commands.forEach((c) => {
          const item = activityItem(c.seq, commandLabel(c.command));
          if (item.dataset.status === "queued" || item.dataset.status === "sent") {
            setActivity(item, "sent to the phone (" + at + ")", "sent");
          }
        });
        return false;
      case "command_delivered":
        event.seqs.forEach((seq) => {
          const item = activity.get(seq);
          if (item && item.dataset.status !== "ok" && item.dataset.status !== "failed") {
            setActivity(item, "received by the phone (" + at + ")", "delivered");
          }
        });
        return false;
      case "command_acknowledged": {
        if (event.seq === null || event.seq === undefined) return true;
        const item = activityItem(event.seq, commandLabel(event.command));
        if (event.ok) {
          setActivity(item, "done, acknowledged by the phone (" + at + ")", "ok");
          say(name() + ": " + item.dataset.label + " acknowledged by the phone.");
        } else {
          setActivity(item, "failed: " + (event.error || "the phone could not do it") + " (" + at + ")", "failed");
          say(name() + ": " + item.dataset.label + " failed.");
        }
        return true;
      }
      case "command_replaced":
      case "command_superseded": {
        const item = activity.get(event.seq);
        if (item) setActivity(item, "replaced by a newer command", "replaced");
        return false;
      }
      case "position":
      case "online":
      case "offline":
      case "renamed":
      case "registered":
      case "reregistered":
        return true;
      default:
        return false;
    }
  }

  // --- Commands ---

  function invalid(input, message) {
    input.setAttribute("aria-invalid", "true");
    input.focus();
    throw new Error(message);
  }

  function valid(...inputs) {
    inputs.forEach((input) => input.removeAttribute("aria-invalid"));
  }

  function wholeNumber(input, min, max, what) {
    const value = Number(input.value);
    if (!Number.isInteger(value) || value < min || value > max) {
      invalid(input, what + " must be a whole number from " + min + " to " + max + ".");
    }
    return value;
  }

  // The same rules as the server's (src/protocol.rs), so mistakes are caught before sending.
  const LOCK_CODE = /^[0-9]{4,8}$/;
  const MESSAGE = /^[\x20-\x7e]{1,100}$/;
  const NUMBER = /^[0-9 +\-()]{0,25}$/;

  async function send(command, button) {
    const device = devices.find((d) => d.id === selectedId);
    if (!device) return;
    try {
      const answer = await api("POST", "/1/devices/" + encodeURIComponent(device.id) + "/cmd", command);
      answer.queued.forEach((q) => {
        const args = answer.command[q.command];
        const item = activityItem(q.seq, commandLabel(q.command, args));
        if (!item.dataset.status) setActivity(item, "waiting for the phone", "queued");
      });
      say(device.name + ": sent " + answer.queued.map((q) => NAMES[q.command]).join(" and ") +
        (answer.parked ? "; the phone is connected and gets it now." : "; the phone gets it when it next connects."));
    } catch (error) {
      if (signedOut(error)) return showSignIn("Your session has ended. Sign in again.");
      alertText(describe(error));
      holdOff(button, error);
    }
  }

  function onSubmit(formId, build) {
    $(formId).addEventListener("submit", (event) => {
      event.preventDefault();
      alertText("");
      let command;
      try {
        command = build();
      } catch (error) {
        alertText(error.message);
        return;
      }
      send(command, event.submitter || $(formId).querySelector("button[type=submit]"));
    });
  }

  function wireCommands() {
    onSubmit("ring-form", () => {
      const minutes = wholeNumber($("ring-minutes"), 1, 1440, "Minutes");
      valid($("ring-minutes"));
      return { r: { p: 10, d: minutes * 60 } };
    });
    $("ring-stop").addEventListener("click", (e) => send({ r: { d: 0 } }, e.currentTarget));

    onSubmit("lock-form", () => {
      const code = $("lock-code").value.trim();
      const message = $("lock-message").value;
      if (!LOCK_CODE.test(code)) invalid($("lock-code"), "The lock code must be 4 to 8 digits, 0-9 only.");
      if (message && !MESSAGE.test(message)) {
        invalid($("lock-message"), "The message must be 1 to 100 plain characters (letters, digits, punctuation; no accents or emoji).");
      }
      valid($("lock-code"), $("lock-message"));
      const command = { l: { c: code } };
      if (message) command.m = { m: message };
      return command;
    });

    onSubmit("message-form", () => {
      const number = $("message-number").value.trim();
      const text = $("message-text").value;
      if (!NUMBER.test(number)) {
        invalid($("message-number"), "The contact number may have at most 25 characters: digits, spaces, + - ( ).");
      }
      if (!MESSAGE.test(text)) {
        invalid($("message-text"), "The message must be 1 to 100 plain characters (letters, digits, punctuation; no accents or emoji).");
      }
      valid($("message-number"), $("message-text"));
      const m = { m: text };
      if (number) m.n = number;
      return { m: m };
    });

    onSubmit("track-form", () => {
      const minutes = wholeNumber($("track-minutes"), 1, 1440, "Minutes");
      const every = wholeNumber($("track-every"), 1, 3600, "Seconds between positions");
      valid($("track-minutes"), $("track-every"));
      return { t: { p: every, d: minutes * 60 } };
    });
    $("track-stop").addEventListener("click", (e) => send({ t: { d: 0 } }, e.currentTarget));
  }

  // --- Erase: named confirmation and the password, checked by the server ---

  function wireErase() {
    const dialog = $("erase-dialog");
    $("erase-open").addEventListener("click", () => {
      $("erase-password").value = "";
      $("erase-error").hidden = true;
      // Without a password, the step-up is a fresh sign-in at the provider.
      const viaProvider = !hasPassword && config.provider;
      $("erase-with-password").hidden = !!viaProvider;
      $("erase-confirm").hidden = !!viaProvider;
      $("erase-with-provider").hidden = !viaProvider;
      $("erase-provider-link").hidden = !viaProvider;
      if (viaProvider) {
        $("erase-provider-name").textContent = config.provider.name;
        $("erase-provider-link").href = config.provider.login + "?erase=" + encodeURIComponent(selectedId);
      }
      dialog.showModal();
      (viaProvider ? $("erase-provider-link") : $("erase-password")).focus();
    });
    $("erase-cancel").addEventListener("click", () => {
      dialog.close();
      $("erase-open").focus();
    });
    $("erase-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const device = devices.find((d) => d.id === selectedId);
      const password = $("erase-password").value;
      const error = $("erase-error");
      if (!device) return;
      if (!password) {
        error.textContent = "Enter your password to confirm.";
        error.hidden = false;
        $("erase-password").focus();
        return;
      }
      const button = $("erase-confirm");
      button.disabled = true;
      try {
        const answer = await api("POST", "/1/devices/" + encodeURIComponent(device.id) + "/erase", { password: password });
        answer.queued.forEach((q) => setActivity(activityItem(q.seq, "Erase"), "waiting for the phone", "queued"));
        dialog.close();
        $("erase-open").focus();
        say(device.name + ": erase sent" + (answer.parked ? "; the phone gets it now." : "; the phone gets it when it next connects."));
      } catch (failure) {
        if (signedOut(failure)) {
          dialog.close();
          return showSignIn("Your session has ended. Sign in again.");
        }
        error.textContent = describe(failure);
        error.hidden = false;
        $("erase-password").value = "";
        $("erase-password").focus();
      } finally {
        button.disabled = false;
      }
    });
  }

  // --- Start ---

  async function start() {
    $("signin-form").addEventListener("submit", signIn);
    $("sign-up").addEventListener("click", signUp);
    $("sign-out").addEventListener("click", signOut);
    $("zoom-in").addEventListener("click", () => map && map.zoomBy(1));
    $("zoom-out").addEventListener("click", () => map && map.zoomBy(-1));
    $("zoom-fit").addEventListener("click", () => map && map.fit());
    wireCommands();
    wireErase();
    try {
      config = await api("GET", "/1/web/config");
    } catch (_) {
      // Defaults: sign-up shown, no tiles. The server will refuse what it does not allow.
    }
    say("");
    try {
      showApp(await api("GET", "/1/web/session"));
    } catch (error) {
      showSignIn(signedOut(error) ? "" : describe(error));
    }
  }

  start();
})();
