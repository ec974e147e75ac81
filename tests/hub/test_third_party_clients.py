"""Real third-party agent clients against a live hub and a real worker on the bundled model.

aider (non-interactive), the ``llm`` CLI and the OpenAI Agents SDK run as subprocesses from
``.venv-clients`` (built by ``scripts/setup-clients``; ``make test`` builds it first). Each gets a
temporary HOME and proxy variables that point at a closed port, with only 127.0.0.1 exempt: the
hub is reachable and nothing else is, so a client that tried to fetch a price list, a version
or analytics would fail here rather than quietly reach the internet.

Whatever the 135M model writes, each client must finish without a protocol error (a connection
drop, a broken stream, a body it cannot parse, a 5xx). A wrong token and a model the pool does
not serve must reach the client as the OpenAI errors it understands (401, 404), not as a crash.
Agent clients send a long system prompt and a title request beside the answer; the last tests
send exactly that through the Agents SDK, and through aider and ``llm`` side by side.
"""

from __future__ import annotations

import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from inference.settings import InferenceSettings
from tests.hub.conftest import BUNDLED_MODEL, LiveHub, free_port

CLIENTS = Path(__file__).resolve().parents[2] / ".venv-clients"
AIDER = CLIENTS / "aider" / "bin" / "aider"
LLM = CLIENTS / "llm-agents" / "bin" / "llm"
AGENTS_PYTHON = CLIENTS / "llm-agents" / "bin" / "python"

pytestmark = pytest.mark.skipif(
    not all(path.exists() for path in (AIDER, LLM, AGENTS_PYTHON)),
    reason="third-party clients are not installed: run `make setup-clients` (make test does)",
)

CLIENT_TIMEOUT_S = 300
# Well-formed, so that the hub looks it up and refuses it, rather than refusing its shape.
WRONG_TOKEN = f"iam_{'0' * 10}_{'A' * 43}"
# aider prints the usage the hub reported for each answer.
AIDER_USAGE = re.compile(r"Tokens: [\d.,]+k? sent, [\d.,]+k? received")
# How the clients report a broken exchange, in words no model answer is expected to hold: Python's
# traceback, aider's `litellm.<Name>Error: …` and its retries, and the hub's own degraded-answer
# mark. llm says `Error: …` on stderr and exits 1; the Agents SDK script exits non-zero.
BROKEN = re.compile(
    r"Traceback \(most recent call last\)"
    r"|litellm\.\w+Error|Retrying in \d"
    r"|\[iamine: degraded answer\]"
)

# An agent client's system prompt: about 6 KB, some 1,500 tokens of the bundled model.
AGENT_INSTRUCTIONS = " ".join(
    f"Rule {i}: when the user asks about file number {i}, read it with the read_file tool, quote "
    f"at most {i % 7 + 3} lines, and never invent paths or commands you have not seen."
    for i in range(36)
)
TITLE_INSTRUCTIONS = "Write a title of at most five words for the user's request."

# The OpenAI Agents SDK, run by .venv-clients' own Python: an Agent on OpenAIChatCompletionsModel
# over an AsyncOpenAI client at the hub, tracing off. Mode "tool" runs an agent with a function
# tool for at most two model turns, so a tool call and its result make the round trip; mode
# "shape" runs an agent with long instructions and a title agent at the same time. What a 135M
# model does with a tool (calls it again, bad arguments) is its own business: MaxTurnsExceeded
# and ModelBehaviorError are outcomes, not failures. An HTTP error from the hub is reported with
# its status and code; anything else escapes as a traceback and a non-zero exit.
AGENT_SCRIPT = '''
import asyncio
import json
import sys
from pathlib import Path

import openai
from agents import (
    Agent,
    ModelSettings,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.exceptions import MaxTurnsExceeded, ModelBehaviorError

base_url, api_key, model_name, mode, instructions_path, title_instructions = sys.argv[1:7]


@function_tool
def read_file(path: str) -> str:
    """Return the text of one file of the project."""
    return f"# {path}\\nprint('hello')\\n"


async def run(agent, prompt):
    try:
        result = await Runner.run(agent, prompt, max_turns=2)
    except (MaxTurnsExceeded, ModelBehaviorError) as error:
        return {"outcome": type(error).__name__}
    except openai.APIStatusError as error:
        return {"outcome": "api_error", "status": error.status_code, "code": error.code}
    usage = result.context_wrapper.usage
    return {
        "outcome": "final",
        "output": str(result.final_output),
        "requests": usage.requests,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
    }


async def main():
    set_tracing_disabled(True)
    client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=300)
    model = OpenAIChatCompletionsModel(model=model_name, openai_client=client)
    settings = ModelSettings(max_tokens=24, temperature=0)
    prompt = "Which file should I read first?"
    if mode == "tool":
        coder = Agent(
            name="coder",
            instructions="You are a coding agent. Read files with read_file before answering.",
            model=model,
            model_settings=settings,
            tools=[read_file],
        )
        results = [await run(coder, prompt)]
    else:
        instructions = Path(instructions_path).read_text()
        answer = Agent(
            name="coder", instructions=instructions, model=model, model_settings=settings
        )
        title = Agent(
            name="title", instructions=title_instructions, model=model, model_settings=settings
        )
        results = list(await asyncio.gather(run(answer, prompt), run(title, prompt)))
    print(json.dumps(results))


asyncio.run(main())
'''


@dataclass
class Client:
    """Where one client process runs: its project folder and its environment (HOME and all)."""

    project: Path
    env: dict[str, str]


@dataclass
class Finished:
    """A finished client process and what it printed."""

    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        """Both streams, for assertion messages and for aider, which prints errors to stdout."""
        return self.stdout + self.stderr

    def broken(self) -> list[str]:
        """What the client printed about a broken exchange with the hub (empty when none)."""
        return BROKEN.findall(self.output)


@pytest.fixture(scope="module")
def hub_overrides() -> dict[str, Any]:
    """A several-thousand-token prompt on one CPU thread takes a while before its first token."""
    return {
        "inference": InferenceSettings(
            local_worker=False, heartbeat_interval_s=1, first_token_timeout_s=240
        )
    }


def make_client(root: Path) -> Client:
    """A HOME and a project folder under ``root``; an environment where only 127.0.0.1 answers."""
    home, project = root / "home", root / "project"
    home.mkdir(parents=True)
    project.mkdir()
    closed = f"http://127.0.0.1:{free_port()}"
    env = {
        "HOME": str(home),
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "NO_COLOR": "1",
        "LLM_USER_PATH": str(home / "llm"),
        # litellm (inside aider) otherwise downloads its model price list at import.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        env[name] = env[name.upper()] = closed
    env["no_proxy"] = env["NO_PROXY"] = "127.0.0.1,localhost"
    return Client(project, env)


@pytest.fixture
def client(tmp_path: Path) -> Client:
    """One client's HOME, project and offline environment."""
    return make_client(tmp_path)


def run_client(client: Client, command: list[str]) -> Finished:
    """Run one client command to the end in the project folder."""
    done = subprocess.run(
        command,
        cwd=client.project,
        env=client.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
        check=False,
    )
    return Finished(done.returncode, done.stdout, done.stderr)


def aider_metadata(hub: LiveHub) -> str:
    """The hub's own ``.aider.model.metadata.json`` (context sizes), from its client config."""
    response = httpx.get(
        f"{hub.url}/v1/client-config/aider",
        headers={"Authorization": f"Bearer {hub.user_token}"},
        timeout=10,
    )
    response.raise_for_status()
    files = {f["path"]: f["content"] for f in response.json()["files"]}
    content: str = files[".aider.model.metadata.json"]
    return content


def aider_command(hub: LiveHub, client: Client, token: str, model: str, file: Path) -> list[str]:
    """aider, non-interactive and offline, editing ``file`` with one message."""
    (client.project / ".aider.model.metadata.json").write_text(aider_metadata(hub))
    # Bounded answers: the model is tiny, but a whole-file rewrite could run long on one thread.
    settings = [{"name": f"openai/{model}", "extra_params": {"max_tokens": 96}}]
    (client.project / ".aider.model.settings.yml").write_text(json.dumps(settings))  # JSON is YAML
    return [
        str(AIDER),
        "--message",
        "Add a function named greet that returns the string 'hello'.",
        "--yes-always",
        "--no-git",
        "--no-auto-commits",
        "--model",
        f"openai/{model}",
        "--openai-api-base",
        f"{hub.url}/v1",
        "--openai-api-key",
        token,
        "--model-metadata-file",
        ".aider.model.metadata.json",
        "--model-settings-file",
        ".aider.model.settings.yml",
        "--edit-format",
        "whole",
        "--map-tokens",
        "0",
        "--timeout",
        str(CLIENT_TIMEOUT_S),
        "--no-analytics",
        "--no-check-update",
        "--no-show-release-notes",
        "--no-show-model-warnings",
        "--no-detect-urls",
        "--no-suggest-shell-commands",
        "--no-auto-lint",
        "--no-fancy-input",
        "--no-pretty",
        "--no-gitignore",
        str(file.name),
    ]


def write_source(client: Client) -> Path:
    """A small Python file in the project for aider to edit."""
    source = client.project / "greeting.py"
    source.write_text('"""Greetings."""\n\nNAME = "world"\n')
    return source


def test_aider_edits_a_file_through_the_hub_without_a_protocol_error(
    live_hub: LiveHub, real_worker: None, client: Client
) -> None:
    source = write_source(client)
    done = run_client(
        client, aider_command(live_hub, client, live_hub.user_token, BUNDLED_MODEL, source)
    )
    assert done.returncode == 0, done.output
    assert done.broken() == [], done.output
    assert "Added greeting.py to the chat." in done.stdout, done.output
    assert AIDER_USAGE.search(done.output), done.output


def test_aider_with_a_wrong_token_reports_the_hubs_authentication_error(
    live_hub: LiveHub, real_worker: None, client: Client
) -> None:
    source = write_source(client)
    before = source.read_text()
    done = run_client(client, aider_command(live_hub, client, WRONG_TOKEN, BUNDLED_MODEL, source))
    assert done.broken() == ["litellm.AuthenticationError"], done.output
    assert source.read_text() == before


def test_aider_asking_for_a_model_the_pool_does_not_serve_gets_not_found(
    live_hub: LiveHub, real_worker: None, client: Client
) -> None:
    source = write_source(client)
    before = source.read_text()
    done = run_client(
        client, aider_command(live_hub, client, live_hub.user_token, "no-such-model", source)
    )
    assert done.broken() == ["litellm.NotFoundError"], done.output
    assert source.read_text() == before


def llm_setup(hub: LiveHub, client: Client, key: str, model: str) -> None:
    """An ``extra-openai-models.yaml`` entry for the hub and its key under ``llm keys``."""
    user = Path(client.env["LLM_USER_PATH"])
    user.mkdir()
    entry = {
        "model_id": "iamine-smollm2",
        "model_name": model,
        "api_base": f"{hub.url}/v1",
        "api_key_name": "iamine",
    }
    (user / "extra-openai-models.yaml").write_text(json.dumps([entry]))  # JSON is YAML
    done = run_client(client, [str(LLM), "keys", "set", "iamine", "--value", key])
    assert done.returncode == 0, done.output


def llm_prompt(*extra: str) -> list[str]:
    """``llm -m iamine-smollm2``, greedy (never empty by chance) and with a capped answer."""
    options = ["-o", "max_tokens", "24", "-o", "temperature", "0"]
    return [str(LLM), "-m", "iamine-smollm2", *options, *extra]


def test_llm_cli_answers_through_an_extra_openai_models_entry(
    live_hub: LiveHub, real_worker: None, client: Client
) -> None:
    llm_setup(live_hub, client, live_hub.user_token, BUNDLED_MODEL)
    done = run_client(client, llm_prompt("Say hello in one short sentence."))
    assert done.returncode == 0, done.output
    assert done.stdout.strip() and done.broken() == [], done.output
    logged = run_client(client, [str(LLM), "logs", "list", "-n", "1", "--json"])
    assert logged.returncode == 0, logged.output
    [record] = json.loads(logged.stdout)
    assert record["model"] == "iamine-smollm2"
    assert record["response"] == done.stdout.strip()
    assert record["output_tokens"] > 0  # the usage the hub sent at the end of the stream


def test_llm_cli_with_a_wrong_key_exits_with_the_hubs_error(
    live_hub: LiveHub, real_worker: None, client: Client
) -> None:
    llm_setup(live_hub, client, WRONG_TOKEN, BUNDLED_MODEL)
    done = run_client(client, llm_prompt("Say hello."))
    assert done.returncode == 1, done.output
    assert done.stderr.startswith("Error: Error code: 401 - "), done.output
    assert done.broken() == [], done.output


def test_llm_cli_entry_for_a_model_the_pool_does_not_serve_fails_cleanly(
    live_hub: LiveHub, real_worker: None, client: Client
) -> None:
    llm_setup(live_hub, client, live_hub.user_token, "no-such-model")
    done = run_client(client, llm_prompt("Say hello."))
    assert done.returncode == 1, done.output
    assert done.stderr.startswith("Error: Error code: 404 - "), done.output
    assert "no-such-model" in done.stderr
    assert done.broken() == [], done.output


def run_agents(
    hub: LiveHub, client: Client, *, token: str, model: str, mode: str
) -> list[dict[str, Any]]:
    """Run the Agents SDK script; the outcome of each agent run, in order."""
    script = client.project / "agent_run.py"
    script.write_text(AGENT_SCRIPT)
    instructions = client.project / "instructions.txt"
    instructions.write_text(AGENT_INSTRUCTIONS)
    command = [str(AGENTS_PYTHON), str(script), f"{hub.url}/v1", token, model, mode]
    done = run_client(client, [*command, str(instructions), TITLE_INSTRUCTIONS])
    assert done.returncode == 0, done.output
    assert done.broken() == [], done.output
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


MODEL_OUTCOMES = ("final", "MaxTurnsExceeded", "ModelBehaviorError")


def test_agents_sdk_run_with_a_function_tool_completes(
    live_hub: LiveHub, real_worker: None, client: Client
) -> None:
    [result] = run_agents(
        live_hub, client, token=live_hub.user_token, model=BUNDLED_MODEL, mode="tool"
    )
    assert result["outcome"] in MODEL_OUTCOMES, result
    if result["outcome"] == "final":
        assert result["requests"] >= 1 and result["output_tokens"] > 0


def test_agents_sdk_gets_the_hubs_401_for_a_wrong_token(
    live_hub: LiveHub, real_worker: None, client: Client
) -> None:
    [result] = run_agents(live_hub, client, token=WRONG_TOKEN, model=BUNDLED_MODEL, mode="tool")
    assert result["outcome"] == "api_error" and result["status"] == 401, result


def test_agents_sdk_gets_the_hubs_404_for_a_model_the_pool_does_not_serve(
    live_hub: LiveHub, real_worker: None, client: Client
) -> None:
    [result] = run_agents(
        live_hub, client, token=live_hub.user_token, model="no-such-model", mode="tool"
    )
    assert result == {"outcome": "api_error", "status": 404, "code": "model_not_found"}


def test_agents_sdk_long_instructions_and_a_concurrent_title_run_both_complete(
    live_hub: LiveHub, real_worker: None, client: Client
) -> None:
    answer, title = run_agents(
        live_hub, client, token=live_hub.user_token, model=BUNDLED_MODEL, mode="shape"
    )
    assert answer["outcome"] == "final" and title["outcome"] == "final", (answer, title)
    assert answer["input_tokens"] > 1000  # the long instructions reached the model whole
    assert title["input_tokens"] < 200
    for result in (answer, title):
        assert result["output"] and result["output_tokens"] > 0, result


def test_aider_and_a_concurrent_llm_title_request_both_complete(
    live_hub: LiveHub, real_worker: None, tmp_path: Path
) -> None:
    coder, titler = make_client(tmp_path / "aider"), make_client(tmp_path / "llm")
    source = write_source(coder)
    edit = aider_command(live_hub, coder, live_hub.user_token, BUNDLED_MODEL, source)
    llm_setup(live_hub, titler, live_hub.user_token, BUNDLED_MODEL)
    title = llm_prompt("-s", TITLE_INSTRUCTIONS, "Add a greet function to greeting.py")
    with ThreadPoolExecutor(2) as pool:
        edited, titled = pool.map(run_client, (coder, titler), (edit, title))
    for done in (edited, titled):
        assert done.returncode == 0, done.output
        assert done.broken() == [], done.output
    assert AIDER_USAGE.search(edited.output), edited.output
    assert titled.stdout.strip()
