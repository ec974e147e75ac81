"""Sign-up by email and password, address verification and password reset, by mailed links.

An account can sign in before its address is verified, but it cannot chat or mint tokens until
it follows the link mailed at sign-up (or a new one, sent from the dashboard). A reset link lets
its holder choose a new password; it also proves the address, and ends every browser session
of the account.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Form
from starlette.requests import Request
from starlette.responses import HTMLResponse

from hub.errors import ConflictError, InvalidRequestError
from hub.state import HubState
from hub.web.accounts import (
    MailPurpose,
    check_email,
    check_password,
    create_account,
    find_account,
    forget_mail_link,
    hash_password,
    issue_mail_link,
    mailed_recently,
    mark_verified,
    set_password_hash,
    use_mail_link,
)
from hub.web.mail import MailError, send_mail
from hub.web.session import CsrfChecked, WebUserDep, close_user_sessions, hub_state
from hub.web.templating import render
from memory.login_keys import drop_password_wrap

router = APIRouter()

NAME_TAKEN = "This user name is taken; choose another, or leave it empty."

_MAILS: dict[MailPurpose, tuple[str, str, str]] = {
    "verify": (
        "Confirm your address for the iamine pool",
        "/verify?token=",
        "Follow this link to confirm your address and start using the pool:",
    ),
    "reset": (
        "Choose a new password for the iamine pool",
        "/reset/confirm?token=",
        "Follow this link to choose a new password (if you did not ask for it, ignore this mail):",
    ),
}


class MailOutcome(StrEnum):
    """What became of a mailed link."""

    SENT = "sent"
    FAILED = "failed"  # the mail server refused it or could not be reached
    TOO_SOON = "too_soon"  # one went to this account less than `mail_interval_s` ago


async def mail_link(
    state: HubState, user_id: UUID, purpose: MailPurpose, email: str
) -> MailOutcome:
    """Mail a new one-time link for ``purpose``, unless one went out moments ago.

    No database connection is held while the mail server answers; a link whose mail failed is
    deleted (it was never delivered, and must not count as recent).
    """
    web = state.settings.web
    async with state.db.pool.acquire() as conn:
        if await mailed_recently(conn, user_id, purpose, web.mail_interval_s):
            return MailOutcome.TOO_SOON
        secret = await issue_mail_link(conn, user_id, purpose, email, web.mail_link_ttl_s)
    subject, path, intro = _MAILS[purpose]
    hours = max(1, round(web.mail_link_ttl_s / 3600))
    body = f"{intro}\n\n{web.link(path + secret)}\n\nThe link works once, for {hours} hours.\n"
    try:
        await send_mail(web, email, subject, body)
    except MailError:
        async with state.db.pool.acquire() as conn:
            await forget_mail_link(conn, secret)
        return MailOutcome.FAILED
    return MailOutcome.SENT


def _message(
    request: Request,
    heading: str,
    text: str,
    *,
    link: str | None = None,
    link_text: str = "",
    kind: str = "notice",
    status_code: int = 200,
) -> HTMLResponse:
    context = {"heading": heading, "text": text, "link": link, "link_text": link_text, "kind": kind}
    return render(request, "message.html", context, status_code)


def _signup_page(
    request: Request, error: str | None = None, status_code: int = 200, **fields: str
) -> HTMLResponse:
    min_length = hub_state(request).settings.web.password_min_length
    context = {"error": error, "email": "", "name": "", "min_length": min_length} | fields
    return render(request, "signup.html", context, status_code)


@router.get("/signup")
async def signup_form(request: Request) -> HTMLResponse:
    """The sign-up page."""
    return _signup_page(request)


@router.post("/signup")
async def signup(
    request: Request,
    _csrf: CsrfChecked,
    email: Annotated[str, Form(max_length=254)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    name: Annotated[str, Form(max_length=64)] = "",
) -> HTMLResponse:
    """Create an account and mail its verification link."""
    state = hub_state(request)
    try:
        address = check_email(email)
        check_password(password, state.settings.web.password_min_length)
        password_hash = await hash_password(password)
        async with state.db.pool.acquire() as conn:
            account = await create_account(
                conn, email=address, password_hash=password_hash, name=name.strip() or None
            )
    except (InvalidRequestError, ConflictError) as exc:
        status = 409 if isinstance(exc, ConflictError) else 400
        taken = isinstance(exc, ConflictError) and exc.param == "name"
        message = NAME_TAKEN if taken else exc.message
        return _signup_page(request, message, status, email=email, name=name)
    if await mail_link(state, account.user_id, "verify", address) is not MailOutcome.SENT:
        return _message(
            request,
            "Account created",
            "Your account exists, but the mail server refused the verification mail. Log in "
            "and send it again from your dashboard.",
            link="/login",
            link_text="Log in",
            kind="error",
            status_code=201,
        )
    return _message(
        request,
        "Check your mail",
        "We sent you a link: follow it to confirm your address, then log in.",
        link="/login",
        link_text="Log in",
        status_code=201,
    )


@router.get("/verify")
async def verify(request: Request, token: str = "") -> HTMLResponse:
    """Follow a verification link: the address is confirmed and the account may chat."""
    async with hub_state(request).db.pool.acquire() as conn:
        found = await use_mail_link(conn, token, "verify") if token else None
        confirmed = found is not None and await mark_verified(conn, *found)
    if not confirmed:
        return _message(
            request,
            "Link not valid",
            "This link is unknown, used or expired. Log in and ask for a new one from your "
            "dashboard.",
            link="/login",
            link_text="Log in",
            kind="error",
            status_code=400,
        )
    return _message(
        request,
        "Address confirmed",
        "Your address is confirmed: you can chat and create API tokens.",
        link="/dashboard",
        link_text="Go to your dashboard",
    )


@router.post("/verify/resend")
async def resend_verification(
    request: Request, user: WebUserDep, _csrf: CsrfChecked
) -> HTMLResponse:
    """Mail the signed-in user a new verification link."""
    state = hub_state(request)
    if user.user_id is None or user.email is None or user.verified:
        return _message(request, "Nothing to confirm", "This account has no address to confirm.")
    outcome = await mail_link(state, user.user_id, "verify", user.email)
    if outcome is MailOutcome.TOO_SOON:
        return _message(
            request,
            "Mail not sent",
            "We sent you a link moments ago: look for it (and in your spam folder), or ask again "
            "in a few minutes.",
            kind="error",
            status_code=429,
        )
    if outcome is MailOutcome.FAILED:
        return _message(
            request,
            "Mail not sent",
            "The mail server refused the mail; try again later.",
            kind="error",
            status_code=502,
        )
    return _message(
        request, "Check your mail", "We sent you a new link.", link="/dashboard", link_text="Back"
    )


@router.get("/reset")
async def reset_form(request: Request) -> HTMLResponse:
    """Ask for a password-reset link."""
    return render(request, "reset.html", {"error": None, "token": None})


@router.post("/reset")
async def reset_request(
    request: Request, _csrf: CsrfChecked, email: Annotated[str, Form(max_length=254)] = ""
) -> HTMLResponse:
    """Mail a reset link if the address has an account (the answer does not say whether)."""
    state = hub_state(request)
    async with state.db.pool.acquire() as conn:
        account = await find_account(conn, email) if email.strip() else None
    if account is not None and not account.disabled:
        # Too soon or failed reads the same: the answer must not tell whether the address exists.
        await mail_link(state, account.user_id, "reset", account.email)
    return _message(
        request,
        "Check your mail",
        "If this address has an account, we sent it a link to choose a new password.",
    )


@router.get("/reset/confirm")
async def reset_confirm_form(request: Request, token: str = "") -> HTMLResponse:
    """The new-password form of a reset link (the link is spent only when the form is sent)."""
    min_length = hub_state(request).settings.web.password_min_length
    context = {"error": None, "token": token, "min_length": min_length}
    return render(request, "reset.html", context)


@router.post("/reset/confirm")
async def reset_confirm(
    request: Request,
    _csrf: CsrfChecked,
    token: Annotated[str, Form(max_length=128)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
) -> HTMLResponse:
    """Set a new password with a reset link; every session of the account ends."""
    state = hub_state(request)
    min_length = state.settings.web.password_min_length
    try:
        check_password(password, min_length)
    except InvalidRequestError as exc:
        context = {"error": exc.message, "token": token, "min_length": min_length}
        return render(request, "reset.html", context, 400)
    password_hash = await hash_password(password)
    async with state.db.pool.acquire() as conn, conn.transaction():
        found = await use_mail_link(conn, token, "reset") if token else None
        if found is not None:
            user_id, email = found
            await set_password_hash(conn, user_id, password_hash)
            await mark_verified(conn, user_id, email)
            await drop_password_wrap(conn, user_id)
            await close_user_sessions(conn, user_id)
    if found is None:
        return _message(
            request,
            "Link not valid",
            "This link is unknown, used or expired. Ask for a new one.",
            link="/reset",
            link_text="Reset your password",
            kind="error",
            status_code=400,
        )
    return _message(
        request, "Password changed", "Your new password is set.", link="/login", link_text="Log in"
    )
