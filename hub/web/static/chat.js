// The chat page with JavaScript: the transcript stays in the page and is sent whole each time
// to POST /chat/stream, whose server-sent events (text, waiting, done, error) are shown as they
// come. Without JavaScript the form posts to /chat and the page shows the whole answer.
(function () {
  "use strict";
  const form = document.querySelector("[data-chat-form]");
  if (!form) return;
  const box = document.querySelector("[data-transcript]");
  const errorLine = document.querySelector("[data-chat-error]");
  const csrf = form.querySelector("input[name=csrf_token]").value;
  const history = [];
  box.querySelectorAll(".msg").forEach((m) => {
    history.push({ role: m.classList.contains("user") ? "user" : "assistant", content: m.querySelector("p").textContent });
  });

  function bubble(role, text) {
    const div = document.createElement("div");
    div.className = "msg " + role;
    const who = document.createElement("strong");
    who.textContent = role === "user" ? box.dataset.you || "You" : box.dataset.pool || "Pool";
    const p = document.createElement("p");
    p.textContent = text;
    div.append(who, p);
    box.appendChild(div);
    return p;
  }

  async function send(event) {
    event.preventDefault();
    const field = form.querySelector("textarea");
    const text = field.value.trim();
    if (!text) return;
    errorLine.textContent = "";
    const button = form.querySelector("button");
    button.disabled = true;
    history.push({ role: "user", content: text });
    bubble("user", text);
    field.value = "";
    const out = bubble("assistant", "…");
    out.parentElement.setAttribute("aria-busy", "true");
    let answer = "";
    try {
      const response = await fetch("/chat/stream", {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
        body: JSON.stringify({ messages: history, model: form.querySelector("select").value }),
      });
      if (!response.ok) {
        const body = await response.json().catch(() => ({}));
        throw new Error((body.error && body.error.message) || response.statusText);
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let kind = "message";
          let data = "";
          block.split("\n").forEach((line) => {
            if (line.startsWith("event:")) kind = line.slice(6).trim();
            else if (line.startsWith("data:")) data += line.slice(5).trim();
          });
          if (!data) continue;
          const piece = JSON.parse(data);
          if (kind === "text") { answer += piece.text; out.textContent = answer; }
          else if (kind === "error") errorLine.textContent = piece.text;
        }
      }
      history.push({ role: "assistant", content: answer });
    } catch (err) {
      history.pop();
      out.parentElement.remove();
      errorLine.textContent = err.message;
    } finally {
      out.parentElement.removeAttribute("aria-busy");
      out.parentElement.dataset.done = "true";
      button.disabled = false;
    }
  }

  form.addEventListener("submit", send);
})();
