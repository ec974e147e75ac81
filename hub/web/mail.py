"""The hub's mails (address verification, password reset), sent over SMTP.

:mod:`smtplib` runs in a worker thread with the configured timeout, so a slow mail server never
blocks the event loop. Without ``smtp_host`` (development) a mail is logged instead of sent.
"""

from __future__ import annotations

import asyncio
import smtplib
from email.message import EmailMessage

import structlog

from hub.web.settings import WebSettings

log = structlog.get_logger()


class MailError(Exception):
    """The mail server refused or could not be reached."""


def compose(settings: WebSettings, to: str, subject: str, body: str) -> EmailMessage:
    """A plain-text mail from the hub's sender address."""
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = to
    message["Subject"] = subject
    message.set_content(body)
    return message


def _deliver(settings: WebSettings, message: EmailMessage) -> None:
    assert settings.smtp_host is not None
    with smtplib.SMTP(
        settings.smtp_host, settings.smtp_port, timeout=settings.smtp_timeout_s
    ) as smtp:
        if settings.smtp_starttls:
            smtp.starttls()
        if settings.smtp_user and settings.smtp_password is not None:
            smtp.login(settings.smtp_user, settings.smtp_password.get_secret_value())
        smtp.send_message(message)


async def send_mail(settings: WebSettings, to: str, subject: str, body: str) -> None:
    """Send one mail, or log it when no SMTP server is configured; MailError on failure."""
    message = compose(settings, to, subject, body)
    if settings.smtp_host is None:
        log.warning("mail_not_sent_no_smtp", to=to, subject=subject, body=body)
        return
    try:
        await asyncio.to_thread(_deliver, settings, message)
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("mail_failed", to=to, subject=subject, error=str(exc))
        raise MailError(str(exc)) from exc
    log.info("mail_sent", to=to, subject=subject)
