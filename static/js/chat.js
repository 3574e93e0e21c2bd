// Quire chat: posts the question, reads the server-sent events with fetch +
// ReadableStream, renders tokens as they arrive, then links the [n] citations.
// No dependencies. Text is only ever inserted as text nodes, never as HTML.
(function () {
  "use strict";
  var root = document.getElementById("chat");
  if (!root) return;
  var form = document.getElementById("chat-form");
  var list = document.getElementById("chat-messages");
  var input = document.getElementById("chat-question");
  var send = document.getElementById("chat-send");
  var stop = document.getElementById("chat-stop");
  var streaming = null; // the AbortController of the answer being read, if any
  var status = document.getElementById("chat-status");
  var errorBox = document.getElementById("chat-error");
  var CITE = /\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]/g;

  function csrfToken() {
    var field = form.querySelector("input[name=csrfmiddlewaretoken]");
    return field ? field.value : "";
  }

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text) node.textContent = text;
    return node;
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = !message;
  }

  // Replace the children of `node` with `text`, its [n] marks linked to known sources.
  function renderCited(node, text, citations) {
    var byNumber = {};
    (citations || []).forEach(function (c) { byNumber[c.n] = c; });
    node.textContent = "";
    var last = 0;
    text.replace(CITE, function (match, numbers, offset) {
      node.appendChild(document.createTextNode(text.slice(last, offset)));
      node.appendChild(document.createTextNode("["));
      numbers.split(",").forEach(function (part, i) {
        var n = parseInt(part, 10);
        if (i) node.appendChild(document.createTextNode(", "));
        var source = byNumber[n];
        if (source) {
          var link = el("a", "cite", String(n));
          link.href = source.url;
          link.title = source.title;
          node.appendChild(link);
        } else {
          node.appendChild(document.createTextNode(String(n)));
        }
      });
      node.appendChild(document.createTextNode("]"));
      last = offset + match.length;
      return match;
    });
    node.appendChild(document.createTextNode(text.slice(last)));
  }

  function renderSources(item, citations) {
    if (!citations || !citations.length) return;
    var ul = el("ul", "sources");
    citations.forEach(function (c) {
      var li = el("li", null, "[" + c.n + "] ");
      var a = el("a", null, c.title);
      a.href = c.url;
      li.appendChild(a);
      ul.appendChild(li);
    });
    item.appendChild(ul);
  }

  // Server-rendered answers: link their citations too.
  Array.prototype.forEach.call(list.querySelectorAll(".message.assistant .content"), function (node) {
    try { renderCited(node, node.textContent, JSON.parse(node.getAttribute("data-citations") || "[]")); }
    catch (e) { /* leave the plain text */ }
  });

  function addMessage(role, text) {
    var hint = document.getElementById("chat-hint");
    if (hint) hint.remove();
    var item = el("li", "message " + role);
    var content = el("div", "content", text);
    item.appendChild(content);
    list.appendChild(item);
    item.scrollIntoView({block: "end"});
    return item;
  }

  async function errorMessage(response) {
    try {
      var body = await response.json();
      if (body && body.error && body.error.message) return body.error.message;
    } catch (e) { /* not JSON */ }
    if (response.status === 403) return "Your session expired. Reload the page and ask again.";
    return "The question could not be sent (HTTP " + response.status + ").";
  }

  async function ensureConversation() {
    if (root.dataset.messagesUrl) return root.dataset.messagesUrl;
    var response = await fetch(root.dataset.createUrl, {
      method: "POST", credentials: "same-origin",
      headers: {"X-CSRFToken": csrfToken(), "Accept": "application/json"},
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    var created = await response.json();
    root.dataset.messagesUrl = created.messages_url;
    form.action = created.messages_url;
    history.replaceState(null, "", created.url);
    return created.messages_url;
  }

  function handleEvent(state, type, data) {
    if (type === "meta") {
      state.item.dataset.messageId = data.message_id;
      state.sources = data.sources || [];
    } else if (type === "token") {
      state.text += data.text;
      state.content.textContent = state.text;
    } else if (type === "citations") {
      state.citations = data.citations || [];
      renderCited(state.content, state.text, state.citations);
      renderSources(state.item, state.citations);
    } else if (type === "done") {
      state.finished = true;
      state.item.classList.remove("streaming");
      var meta = data.extractive
        ? "Extractive answer: no language model is configured, so these are quoted passages."
        : (data.model || data.provider) + " · " + data.usage.completion_tokens + " tokens" +
          (data.cached ? " · cached" : "");
      state.item.appendChild(el("p", "answer-meta muted" + (data.extractive ? " extractive" : ""), meta));
    } else if (type === "error") {
      state.finished = true;
      state.item.classList.remove("streaming");
      state.item.classList.add(state.text ? "status-partial" : "status-error");
      renderCited(state.content, state.text, state.sources);
      state.item.appendChild(el("p", "message-state", (state.text ? "The answer was interrupted: " : "No answer: ") + data.message));
    }
  }

  function parseBlock(state, block) {
    var type = "message", data = "";
    block.split("\n").forEach(function (line) {
      if (!line || line.charAt(0) === ":") return; // heartbeat comments
      var colon = line.indexOf(":");
      var field = colon < 0 ? line : line.slice(0, colon);
      var value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") type = value;
      else if (field === "data") data += (data ? "\n" : "") + value;
    });
    if (data) handleEvent(state, type, JSON.parse(data));
  }

  async function ask(question) {
    showError("");
    var url = await ensureConversation();
    // Stop closes the connection: the server cancels the model call and keeps what was said.
    var controller = new AbortController();
    var response = await fetch(url, {
      method: "POST", credentials: "same-origin", signal: controller.signal,
      headers: {"X-CSRFToken": csrfToken(), "Content-Type": "application/json", "Accept": "text/event-stream"},
      body: JSON.stringify({question: question}),
    });
    var type = response.headers.get("Content-Type") || "";
    if (!response.ok || type.indexOf("text/event-stream") !== 0) {
      throw new Error(await errorMessage(response));
    }
    addMessage("user", question);
    var item = addMessage("assistant streaming", "");
    var state = {item: item, content: item.querySelector(".content"), text: "", sources: [], citations: [], finished: false};
    var reader = response.body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    streaming = controller;
    stop.hidden = false;
    for (;;) {
      var chunk;
      try {
        chunk = await reader.read();
      } catch (err) {
        if (!controller.signal.aborted) throw err;
        if (!state.finished) handleEvent(state, "error", {message: "you stopped it."});
        return;
      }
      if (chunk.done) break;
      buffer += decoder.decode(chunk.value, {stream: true}).replace(/\r\n/g, "\n");
      var end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        parseBlock(state, buffer.slice(0, end));
        buffer = buffer.slice(end + 2);
      }
    }
    if (!state.finished) handleEvent(state, "error", {message: "the connection was lost."});
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var question = input.value.trim();
    if (!question) return;
    send.disabled = true;
    status.textContent = "Answering…";
    ask(question).then(function () {
      input.value = "";
    }).catch(function (err) {
      showError(err.message || String(err));
    }).finally(function () {
      streaming = null;
      stop.hidden = true;
      send.disabled = false;
      status.textContent = "";
      input.focus();
    });
  });

  stop.addEventListener("click", function () {
    if (streaming) streaming.abort();
  });

  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
})();
