// chatcore's web chat: speaks the JSON protocol of docs/websocket.md over /ws.
// All user and model text is put on the page as text (textContent), never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "chatcore.token";
  const CONVERSATION_KEY = "chatcore.conversation";
  const MAX_BACKOFF_S = 30;

  const $ = (id) => document.getElementById(id);
  const log = $("log");
  const statusLine = $("status");
  const notice = $("notice");
  const input = $("text");
  const sendButton = $("send");
  const stopButton = $("stop");
  const tokenForm = $("token-form");
  const tokenInput = $("token");
  const remember = $("remember");

  let socket = null;
  let ready = false;
  let attempt = 0;
  let reconnectTimer = null;
  let maxBytes = 16384;
  let counter = 0;
  const inFlight = new Map(); // client message id -> {bubble, user}
  const answered = new Map(); // client message id -> its reply bubble, for notices after it
  const ANSWERED_KEPT = 100;

  // -- the token: kept in this browser only (session, or local storage when remembered) -----

  function readToken() {
    return sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY) || "";
  }

  function storeToken(token, keep) {
    sessionStorage.removeItem(TOKEN_KEY);
    localStorage.removeItem(TOKEN_KEY);
    if (token) (keep ? localStorage : sessionStorage).setItem(TOKEN_KEY, token);
  }

  function takeTokenFromHash() {
    // A link such as /#token=... hands the page a token; the hash never reaches the server.
    const params = new URLSearchParams(location.hash.slice(1));
    const token = params.get("token");
    if (token) {
      storeToken(token, localStorage.getItem(TOKEN_KEY) !== null);
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  function conversation() {
    return sessionStorage.getItem(CONVERSATION_KEY) || "default";
  }

  // -- what the page shows -------------------------------------------------------------------

  function setStatus(text) {
    statusLine.textContent = text;
  }

  function showNotice(text) {
    notice.textContent = text;
    notice.hidden = !text;
  }

  function atBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  }

  function addBubble(kind, text) {
    const follow = atBottom();
    const bubble = document.createElement("div");
    bubble.className = "msg " + kind;
    bubble.textContent = text;
    log.appendChild(bubble);
    if (follow) log.scrollTop = log.scrollHeight;
    return bubble;
  }

  function appendText(bubble, text) {
    const follow = atBottom();
    bubble.appendChild(document.createTextNode(text));
    if (follow) log.scrollTop = log.scrollHeight;
  }

  function markError(bubble, text) {
    const line = document.createElement("span");
    line.className = "error";
    line.textContent = text;
    bubble.classList.remove("streaming");
    bubble.appendChild(line);
  }

  function updateButtons() {
    const open = ready && socket !== null && socket.readyState === WebSocket.OPEN;
    input.disabled = !open;
    sendButton.disabled = !open;
    stopButton.disabled = !open || inFlight.size === 0;
  }

  function finish(id) {
    const entry = inFlight.get(id);
    if (entry) {
      answered.set(id, entry.bubble);
      if (answered.size > ANSWERED_KEPT) answered.delete(answered.keys().next().value);
    }
    inFlight.delete(id);
    updateButtons();
  }

  function addNote(id, text) {
    // A notice ("noted: ...") goes under its reply, after any notes it already has.
    const follow = atBottom();
    const note = document.createElement("div");
    note.className = "note";
    note.dataset.reply = id;
    note.textContent = text;
    let anchor = answered.get(id);
    if (anchor && anchor.isConnected) {
      while (anchor.nextElementSibling && anchor.nextElementSibling.dataset.reply === id) {
        anchor = anchor.nextElementSibling;
      }
      anchor.after(note);
    } else {
      log.appendChild(note);
    }
    if (follow) log.scrollTop = log.scrollHeight;
  }

  // -- the connection ------------------------------------------------------------------------

  function socketUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const token = readToken();
    const query = token ? "?token=" + encodeURIComponent(token) : "";
    return scheme + "//" + location.host + "/ws" + query;
  }

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    if (socket !== null) {
      socket.onclose = null;
      socket.close();
    }
    ready = false;
    updateButtons();
    setStatus("Connecting…");
    let opened = false;
    const ws = new WebSocket(socketUrl());
    socket = ws;
    ws.onopen = () => {
      opened = true;
      setStatus("Connected; waiting for the model…");
    };
    ws.onmessage = (event) => {
      let frame;
      try {
        frame = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      handleFrame(frame);
    };
    ws.onclose = (event) => {
      if (socket !== ws) return;
      socket = null;
      ready = false;
      for (const [id, entry] of inFlight) {
        markError(entry.bubble, "Interrupted: the connection was lost.");
        inFlight.delete(id);
      }
      updateButtons();
      if (opened) {
        afterDrop(event.code);
      } else {
        diagnose();
      }
    };
  }

  function scheduleReconnect(seconds) {
    const delay = seconds !== undefined
      ? seconds
      : Math.min(MAX_BACKOFF_S, 2 ** attempt) * (0.5 + Math.random() / 2);
    attempt += 1;
    setStatus("Disconnected; reconnecting in " + Math.ceil(delay) + " s…");
    reconnectTimer = setTimeout(connect, delay * 1000);
  }

  function afterDrop(code) {
    const reasons = {
      1001: "The server restarted or is shutting down.",
      1008: "The connection was closed: too many messages over the limit.",
      1009: "The connection was closed: a message was too large.",
      1013: "The server is busy (too many connections); trying again.",
    };
    if (reasons[code]) showNotice(reasons[code]);
    scheduleReconnect();
  }

  async function diagnose() {
    // The browser hides why a WebSocket was refused; ask the server about the token.
    let status = 0;
    try {
      const headers = {};
      const token = readToken();
      if (token) headers.Authorization = "Bearer " + token;
      status = (await fetch("/whoami", { headers, cache: "no-store" })).status;
    } catch (error) {
      status = 0;
    }
    if (status === 401) {
      setStatus("Not connected");
      showNotice(readToken() ? "The token was refused; enter a valid one." : "Enter your access token.");
      tokenForm.hidden = false;
      tokenInput.focus();
    } else if (status === 429) {
      showNotice("Too many failed logins from your address; waiting a minute.");
      scheduleReconnect(60);
    } else if (status === 403) {
      setStatus("Not connected");
      showNotice("This server does not accept connections from this page's address.");
    } else {
      scheduleReconnect();
    }
  }

  // -- frames from the server ----------------------------------------------------------------

  function handleFrame(frame) {
    const entry = typeof frame.id === "string" ? inFlight.get(frame.id) : undefined;
    switch (frame.type) {
      case "ready":
        ready = true;
        attempt = 0;
        if (Number.isInteger(frame.max_message_bytes)) maxBytes = frame.max_message_bytes;
        setStatus("Connected as " + String(frame.user));
        showNotice("");
        tokenForm.hidden = true;
        updateButtons();
        input.focus();
        break;
      case "chunk":
        if (entry) appendText(entry.bubble, String(frame.text));
        break;
      case "reply":
        if (entry) {
          entry.bubble.textContent = String(frame.text);
          entry.bubble.classList.remove("streaming");
          if (frame.finish_reason === "length") markError(entry.bubble, "(cut at the length limit)");
          finish(frame.id);
        }
        break;
      case "error":
        showError(frame, entry);
        break;
      case "notice":
        addNote(String(frame.id), String(frame.text));
        break;
      default:
        break;
    }
  }

  const LIMITS = new Set(["rate_limited", "too_many_pending", "not_ready", "shutting_down"]);

  function showError(frame, entry) {
    const text = String(frame.text || "Something went wrong.");
    if (entry) {
      markError(entry.bubble, frame.code === "cancelled" ? "Stopped." : text);
      finish(frame.id);
    }
    if (!entry || LIMITS.has(frame.code)) showNotice(text);
  }

  // -- sending -------------------------------------------------------------------------------

  function send() {
    const text = input.value.trim();
    if (!text || !ready || socket === null) return;
    const id = "m" + (++counter) + "-" + Math.random().toString(36).slice(2, 8);
    const frame = JSON.stringify({ type: "message", id, text, conversation: conversation() });
    if (new TextEncoder().encode(frame).length > maxBytes) {
      showNotice("That message is too long (at most about " + maxBytes + " bytes).");
      return;
    }
    showNotice("");
    addBubble("user", text);
    const bubble = addBubble("bot streaming", "");
    inFlight.set(id, { bubble });
    socket.send(frame);
    input.value = "";
    autosize();
    updateButtons();
  }

  function stop() {
    if (socket !== null && inFlight.size > 0) socket.send(JSON.stringify({ type: "cancel" }));
  }

  function autosize() {
    input.style.height = "auto";
    input.style.height = input.scrollHeight + "px";
  }

  // -- wiring --------------------------------------------------------------------------------

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  input.addEventListener("input", autosize);
  stopButton.addEventListener("click", stop);
  $("show-token").addEventListener("click", () => {
    tokenForm.hidden = !tokenForm.hidden;
    if (!tokenForm.hidden) tokenInput.focus();
  });
  tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    storeToken(tokenInput.value.trim(), remember.checked);
    tokenInput.value = "";
    tokenForm.hidden = true;
    showNotice("");
    attempt = 0;
    connect();
  });
  $("new-chat").addEventListener("click", () => {
    sessionStorage.setItem(CONVERSATION_KEY, "c-" + Math.random().toString(36).slice(2, 12));
    log.replaceChildren();
    answered.clear();
    showNotice("");
  });
  remember.checked = localStorage.getItem(TOKEN_KEY) !== null;

  takeTokenFromHash();
  connect();
})();
