"""Three live hubs on loopback: invites, peering, signed pings, and every refusal.

Hub A invites, hub B joins through the admin API, hub C through the CLI. Refusals are sent as
raw signed requests (a stranger's key, or a key the test admits at A itself), and each must be a
clear 401/403 with its code and leave nothing recorded.
"""

from __future__ import annotations

import asyncio
import re
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta

import anyio
import asyncpg
import httpx
import orjson
import pytest
from typer.testing import CliRunner

from federation import invites
from federation.client import PeerClient
from federation.errors import PeerFailed
from federation.identity import PoolIdentity
from hub.cli import app
from tests.federation.conftest import FedHub, admit_identity, new_identity, send, signed_request

runner = CliRunner()
ID = re.compile(r"iam1[a-z2-7]{52}")


def _invite(hub: FedHub, **body: object) -> dict[str, object]:
    response = hub.admin("POST", "/admin/api/federation/invites", json=body)
    assert response.status_code == 201, response.text
    minted: dict[str, object] = response.json()
    return minted


def _peer_ids(hub: FedHub) -> set[str]:
    response = hub.admin("GET", "/admin/api/federation/peers")
    assert response.status_code == 200, response.text
    return {peer["pool_id"] for peer in response.json()["data"]}


def _hello(
    joiner: PoolIdentity, inviter: FedHub, invite: object, *, to: str | None = None
) -> bytes:
    return orjson.dumps(
        {
            "pool_id": joiner.pool_id,
            "public_key": joiner.public_key_text,
            "url": "http://127.0.0.1:9",
            "invite": invite,
            "to": to or inviter.identity.pool_id,
        }
    )


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code, response.text


@pytest.fixture(scope="module")
def known(fed_hubs: list[FedHub]) -> PoolIdentity:
    """A key admitted as a peer of hub A by the test itself (to send crafted requests)."""
    identity = new_identity()
    admit_identity(fed_hubs[0].database_url, identity)
    return identity


def _ping(hub: FedHub, identity: PoolIdentity, now: datetime | None = None) -> httpx.Response:
    return send(signed_request(identity, "GET", hub.url + "/v1/federation/ping", now=now))


def test_an_invite_peers_two_hubs_both_ways_and_pings_are_signed_and_accepted(
    fed_hubs: list[FedHub],
) -> None:
    a, b, _ = fed_hubs
    minted = _invite(a)
    assert minted["pool_id"] == a.identity.pool_id and minted["url"] == a.url
    added = b.admin(
        "POST",
        "/admin/api/federation/peers",
        json={"url": a.url, "fingerprint": minted["pool_id"], "invite": minted["invite"]},
    )
    assert added.status_code == 201, added.text
    assert added.json()["pool_id"] == a.identity.pool_id
    assert a.identity.pool_id in _peer_ids(b)
    assert b.identity.pool_id in _peer_ids(a)

    from_b = b.admin("POST", f"/admin/api/federation/peers/{a.identity.pool_id}/ping")
    assert from_b.status_code == 200, from_b.text
    assert from_b.json()["pool_id"] == a.identity.pool_id
    assert from_b.json()["peer"] == b.identity.pool_id
    from_a = a.admin("POST", f"/admin/api/federation/peers/{b.identity.pool_id}/ping")
    assert from_a.status_code == 200, from_a.text
    assert from_a.json()["peer"] == a.identity.pool_id

    seen = a.rows(
        "SELECT last_seen_at, admitted_by FROM peers WHERE pool_id = $1", b.identity.pool_id
    )
    assert seen[0]["last_seen_at"] is not None and seen[0]["admitted_by"].startswith("invite ")
    listed = b.admin("GET", "/admin/api/federation/peers").json()["data"]
    mine = next(p for p in listed if p["pool_id"] == a.identity.pool_id)
    assert mine["state"] == "ok" and mine["last_ok_at"] is not None


def test_the_cli_shows_the_hub_s_id_invites_and_peers_through_the_other_hub(
    fed_hubs: list[FedHub],
) -> None:
    a, _, c = fed_hubs
    shown = runner.invoke(app, ["federation", "id"], env=c.env())
    assert shown.exit_code == 0, shown.output
    assert c.identity.pool_id in shown.output and c.url in shown.output

    minted = runner.invoke(app, ["federation", "invite", "--expires", "10m"], env=a.env())
    assert minted.exit_code == 0, minted.output
    code = re.search(r"--invite (iaminv1_\S+)", minted.output)
    assert code is not None and f"--fingerprint {a.identity.pool_id}" in minted.output

    added = runner.invoke(
        app,
        [
            "federation",
            "peers",
            "add",
            a.url,
            "--fingerprint",
            a.identity.pool_id,
            "--invite",
            code[1],
        ],
        env=c.env(),
    )
    assert added.exit_code == 0, added.output
    assert c.identity.pool_id in _peer_ids(a)
    listed = runner.invoke(app, ["federation", "peers", "list"], env=c.env())
    assert a.identity.pool_id in listed.output and re.search(r"\bok\b", listed.output)

    pinged = runner.invoke(app, ["federation", "peers", "ping", a.identity.pool_id], env=c.env())
    assert pinged.exit_code == 0, pinged.output
    assert f"sees us as {c.identity.pool_id}" in pinged.output

    again = runner.invoke(
        app,
        [
            "federation",
            "peers",
            "add",
            a.url,
            "--fingerprint",
            a.identity.pool_id,
            "--invite",
            code[1],
        ],
        env=c.env(),
    )
    assert again.exit_code == 1 and "used already" in again.output

    removed = runner.invoke(app, ["federation", "peers", "remove", a.identity.pool_id], env=c.env())
    assert removed.exit_code == 0, removed.output
    assert a.identity.pool_id not in _peer_ids(c)
    gone = runner.invoke(app, ["federation", "peers", "remove", a.identity.pool_id], env=c.env())
    assert gone.exit_code == 1 and "No peer" in gone.output


def test_a_wrong_fingerprint_is_refused_and_nothing_is_recorded_on_either_side(
    fed_hubs: list[FedHub],
) -> None:
    a, b, c = fed_hubs
    before_a, before_b = _peer_ids(a), _peer_ids(b)
    minted = _invite(a)
    wrong = b.admin(
        "POST",
        "/admin/api/federation/peers",
        json={"url": a.url, "fingerprint": c.identity.pool_id, "invite": minted["invite"]},
    )
    _refused(wrong, 403, "fingerprint_mismatch")
    assert _peer_ids(a) == before_a and _peer_ids(b) == before_b
    unused = a.rows("SELECT used_at FROM federation_invites WHERE id = $1", minted["invite_id"])
    assert unused[0]["used_at"] is None


def test_a_joiner_refuses_an_answer_not_signed_by_the_fingerprint_s_key(
    fed_hubs: list[FedHub],
) -> None:
    """Hub A's genuine answer, checked against hub B's key (what a pool answering in another's
    name would send), does not authenticate: the joiner records nothing from it."""
    a, b, c = fed_hubs
    hello = {
        "pool_id": c.identity.pool_id,
        "public_key": c.identity.public_key_text,
        "url": c.url,
        "invite": _invite(a)["invite"],
        "to": a.identity.pool_id,
    }

    async def attempt() -> None:
        async with httpx.AsyncClient() as http:
            client = PeerClient(c.identity, c.settings.federation, http, _no_database)
            exchange = await client.exchange(a.url, "POST", "/v1/federation/hello", hello)
            assert exchange.status == 200
            with pytest.raises(PeerFailed) as refused:
                client.answer(exchange, b.identity.pool_id, b.identity.public_key)
            assert refused.value.code == "peer_answer_invalid"
            assert (
                client.answer(exchange, a.identity.pool_id, a.identity.public_key)["url"] == a.url
            )

    anyio.run(attempt)


def _no_database() -> AbstractAsyncContextManager[asyncpg.Connection]:
    raise AssertionError("answer() must not touch the database")


def test_a_used_or_expired_invite_is_refused_with_its_code(fed_hubs: list[FedHub]) -> None:
    a = fed_hubs[0]
    minted = _invite(a)
    first, second = new_identity(), new_identity()
    hello = _hello(first, a, minted["invite"])
    ok = send(signed_request(first, "POST", a.url + "/v1/federation/hello", hello), hello)
    assert ok.status_code == 200, ok.text
    reused = _hello(second, a, minted["invite"])
    response = send(signed_request(second, "POST", a.url + "/v1/federation/hello", reused), reused)
    _refused(response, 403, "invite_used")

    async def expired_code() -> str:
        conn = await asyncpg.connect(a.database_url)
        try:
            code, _ = await invites.create_invite(
                conn,
                pool_id=a.identity.pool_id,
                now=datetime.now(UTC) - timedelta(hours=2),
                ttl=timedelta(hours=1),
            )
            return code
        finally:
            await conn.close()

    stale = _hello(second, a, asyncio.run(expired_code()))
    response = send(signed_request(second, "POST", a.url + "/v1/federation/hello", stale), stale)
    _refused(response, 403, "invite_expired")
    unknown = _hello(second, a, "iaminv1_" + "x" * 43)
    response = send(
        signed_request(second, "POST", a.url + "/v1/federation/hello", unknown), unknown
    )
    _refused(response, 403, "invite_invalid")
    assert second.pool_id not in _peer_ids(a)


def test_an_invite_bound_to_a_pool_refuses_any_other(fed_hubs: list[FedHub]) -> None:
    a = fed_hubs[0]
    meant, other = new_identity(), new_identity()
    minted = _invite(a, for_pool_id=meant.pool_id, expires_s=600)
    hello = _hello(other, a, minted["invite"])
    response = send(signed_request(other, "POST", a.url + "/v1/federation/hello", hello), hello)
    _refused(response, 403, "invite_invalid")
    hello = _hello(meant, a, minted["invite"])
    response = send(signed_request(meant, "POST", a.url + "/v1/federation/hello", hello), hello)
    assert response.status_code == 200, response.text


def test_a_hello_naming_another_pool_is_refused_without_using_the_invite(
    fed_hubs: list[FedHub],
) -> None:
    a, b, _ = fed_hubs
    joiner = new_identity()
    minted = _invite(a)
    hello = _hello(joiner, a, minted["invite"], to=b.identity.pool_id)
    response = send(signed_request(joiner, "POST", a.url + "/v1/federation/hello", hello), hello)
    _refused(response, 403, "fingerprint_mismatch")
    hello = _hello(joiner, a, minted["invite"])
    response = send(signed_request(joiner, "POST", a.url + "/v1/federation/hello", hello), hello)
    assert response.status_code == 200, response.text


def test_an_unknown_key_is_refused(fed_hubs: list[FedHub]) -> None:
    a = fed_hubs[0]
    _refused(_ping(a, new_identity()), 401, "unknown_peer")


def test_a_tampered_body_is_refused_as_a_digest_mismatch(
    fed_hubs: list[FedHub], known: PoolIdentity
) -> None:
    a = fed_hubs[0]
    request = signed_request(known, "GET", a.url + "/v1/federation/ping")
    _refused(send(request, b"{}"), 401, "digest_mismatch")
    joiner = new_identity()
    hello = _hello(joiner, a, _invite(a)["invite"])
    request = signed_request(joiner, "POST", a.url + "/v1/federation/hello", hello)
    _refused(send(request, hello.replace(b"127.0.0.1:9", b"127.0.0.1:8")), 401, "digest_mismatch")
    assert joiner.pool_id not in _peer_ids(a)


def test_a_bad_signature_is_refused(fed_hubs: list[FedHub], known: PoolIdentity) -> None:
    a = fed_hubs[0]
    request = signed_request(known, "GET", a.url + "/v1/federation/ping")
    forged = signed_request(new_identity(), "GET", a.url + "/v1/federation/ping")
    request.headers["Signature"] = forged.headers["Signature"]
    _refused(send(request), 401, "signature_invalid")
    _refused(httpx.get(a.url + "/v1/federation/ping", timeout=30), 401, "signature_missing")


def test_a_replayed_request_is_refused(fed_hubs: list[FedHub], known: PoolIdentity) -> None:
    a = fed_hubs[0]
    request = signed_request(known, "GET", a.url + "/v1/federation/ping")
    assert send(request).status_code == 200
    _refused(send(request), 401, "replayed_request")


def test_a_signature_too_old_or_from_the_future_is_refused(
    fed_hubs: list[FedHub], known: PoolIdentity
) -> None:
    a = fed_hubs[0]
    old = datetime.now(UTC) - timedelta(seconds=a.settings.federation.max_age_s + 60)
    _refused(_ping(a, known, now=old), 401, "signature_expired")
    ahead = datetime.now(UTC) + timedelta(seconds=a.settings.federation.clock_skew_s + 60)
    _refused(_ping(a, known, now=ahead), 401, "signature_future")


def test_a_request_signed_for_another_pool_is_refused(
    fed_hubs: list[FedHub], known: PoolIdentity
) -> None:
    a, b, _ = fed_hubs
    meant_for_b = signed_request(known, "GET", b.url + "/v1/federation/ping")
    host = b.url.removeprefix("http://")
    response = send(meant_for_b, to=a.url, host=host)
    _refused(response, 403, "wrong_destination")
    nonce = re.search(r'nonce="([^"]+)"', meant_for_b.headers["Signature-Input"])
    assert nonce is not None
    assert a.rows("SELECT 1 FROM federation_nonces WHERE nonce = $1", nonce[1]) == []


def test_a_failing_peer_backs_off_without_being_down_after_one_failure(
    fed_hubs: list[FedHub],
) -> None:
    a = fed_hubs[0]
    silent = new_identity()
    admit_identity(a.database_url, silent)  # its URL (port 9) answers nothing
    response = a.admin("POST", f"/admin/api/federation/peers/{silent.pool_id}/ping")
    _refused(response, 502, "peer_unreachable")
    listed = a.admin("GET", "/admin/api/federation/peers").json()["data"]
    row = next(p for p in listed if p["pool_id"] == silent.pool_id)
    assert row["state"] == "failing" and row["consecutive_failures"] == 1
    assert row["next_try_at"] is not None and row["last_error"].startswith("peer_unreachable")
