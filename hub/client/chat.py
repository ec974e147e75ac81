"""``iamine chat``: a conversation with the pool, streamed to the terminal.

The session keeps the messages so far (the chat API is stateless: each request carries the
conversation) and the id the hub recorded it under (``X-Conversation-Id``), so that the hub's
memory files every exchange in the same conversation. ``--conversation ID`` resumes one: its
stored turns (when the user keeps L2 memory) are loaded and sent before the new prompt.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markdown import Markdown

from hub.client.api import HubClient
from hub.client.errors import ClientError

EXIT_COMMANDS = ("/exit", "/quit")
NEW_COMMAND = "/new"


@dataclass(frozen=True)
class ChatReply:
    """One finished answer and what the hub said about it."""

    answer: str
    model: str
    conversation_id: str | None
    usage: dict[str, Any] | None
    finish_reason: str | None
    headers: dict[str, str]

    def as_json(self) -> dict[str, Any]:
        """The reply as ``iamine chat --json`` prints it."""
        return {
            "answer": self.answer,
            "model": self.model,
            "conversation_id": self.conversation_id,
            "usage": self.usage,
            "finish_reason": self.finish_reason,
            "headers": self.headers,
        }


def default_model(client: HubClient) -> str:
    """The first model ``/v1/models`` lists."""
    models = client.get("/v1/models")["data"]
    if not models:
        raise ClientError("the pool serves no model right now (see `iamine models list`)")
    return str(models[0]["id"])


class ChatSession:
    """The messages of one conversation with one model, and the hub's id for it."""

    def __init__(
        self,
        client: HubClient,
        model: str,
        system: str | None = None,
        conversation_id: str | None = None,
    ) -> None:
        self.client = client
        self.model = model
        self.system = system
        self.conversation_id = conversation_id
        self.history: list[dict[str, Any]] = []

    def resume(self) -> int:
        """Load the stored turns of ``conversation_id``; how many messages were loaded.

        A conversation the hub keeps no turns of (memory off, another key, unknown id) starts
        empty: the exchange is still recorded under the id.
        """
        if self.conversation_id is None:
            return 0
        try:
            stored = self.client.get(f"/v1/conversations/{self.conversation_id}")
        except ClientError as exc:
            if exc.status in (403, 404):
                return 0
            raise
        for turn in sorted(stored.get("turns", []), key=lambda t: t["seq"]):
            self.history.extend(turn["messages"])
        return len(self.history)

    def reset(self) -> None:
        """Start a new conversation (the hub gives it a new id)."""
        self.history, self.conversation_id = [], None

    def ask(self, prompt: str, on_delta: Callable[[str], None] | None = None) -> ChatReply:
        """Send the conversation and the prompt; stream the answer to ``on_delta``.

        Only an answered exchange joins the history: a failure or Ctrl-C leaves it as it was.
        """
        question = {"role": "user", "content": prompt}
        has_system = any(m.get("role") == "system" for m in self.history)
        system = [{"role": "system", "content": self.system}] if self.system else []
        messages = [*([] if has_system else system), *self.history, question]
        body = {"model": self.model, "messages": messages}
        with self.client.chat(body, self.conversation_id) as stream:
            for delta in stream:
                if on_delta is not None:
                    on_delta(delta)
        self.conversation_id = stream.conversation_id or self.conversation_id
        if not has_system:
            self.history.extend(system)
        self.history += [question, {"role": "assistant", "content": stream.answer}]
        return ChatReply(
            answer=stream.answer,
            model=stream.model or self.model,
            conversation_id=self.conversation_id,
            usage=stream.usage,
            finish_reason=stream.finish_reason,
            headers=stream.headers,
        )


def stream_to(console: Console, session: ChatSession, prompt: str, markdown: bool) -> ChatReply:
    """Ask and show the answer as it comes: rendered Markdown on a terminal, plain text else."""
    if not markdown:
        out = console.file

        def write(delta: str) -> None:
            out.write(delta)
            out.flush()

        reply = session.ask(prompt, write)
        write("\n")
        return reply
    text = ""
    with Live(Markdown(""), console=console, vertical_overflow="visible") as live:

        def show(delta: str) -> None:
            nonlocal text
            text += delta
            live.update(Markdown(text))

        return session.ask(prompt, show)


def describe_route(reply: ChatReply) -> str:
    """The route headers in one line (``-v``)."""
    shown = {k.lower().removeprefix("x-iamine-"): v for k, v in reply.headers.items()}
    return " · ".join(f"{name}: {value}" for name, value in sorted(shown.items()))


def interactive(
    session: ChatSession,
    console: Console,
    err_console: Console,
    read: Callable[[], str],
    *,
    markdown: bool,
    verbose: bool = False,
) -> None:
    """The prompt loop: ``/new`` starts a new conversation, ``/exit`` (or Ctrl-D) leaves.

    Ctrl-C during an answer closes its stream (the hub cancels the job) and comes back to the
    prompt; an error is shown and the loop goes on.
    """
    console.print(
        f"[dim]iamine chat · {session.model} · {NEW_COMMAND} starts a new conversation, "
        f"{EXIT_COMMANDS[0]} leaves[/]"
    )
    while True:
        try:
            text = read().strip()
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        if text in EXIT_COMMANDS:
            return
        if text == NEW_COMMAND:
            session.reset()
            console.print("[dim]new conversation[/]")
            continue
        if not text:
            continue
        try:
            reply = stream_to(console, session, text, markdown)
        except KeyboardInterrupt:
            console.print("\n[yellow]cancelled[/]")
            continue
        except ClientError as exc:
            err_console.print(f"[bold red]error:[/] {exc.message}", highlight=False)
            continue
        if verbose:
            err_console.print(f"[dim]{describe_route(reply)}[/]", highlight=False)
