"""Settings of the web pages: public URL, sessions, sign-in limits, mail (SMTP) and OpenID Connect.

Set with ``IAMINE_WEB__*`` variables (``IAMINE_WEB__SMTP_HOST=mail.example.org``); every field is
documented in ``docs/configuration.md``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr


class OidcSettings(BaseModel):
    """One OpenID Connect issuer (Google is one configuration of it); off while unset."""

    issuer: str | None = Field(
        None,
        description="Issuer URL (its `/.well-known/openid-configuration` is read), e.g. "
        "`https://accounts.google.com`; unset turns OIDC sign-in off.",
    )
    client_id: str = Field("", description="Client id registered with the issuer.")
    client_secret: SecretStr = Field(
        SecretStr(""), description="Client secret registered with the issuer."
    )
    display_name: str = Field(
        "OpenID Connect", description="Name on the sign-in button, e.g. `Google`."
    )
    timeout_s: float = Field(10.0, gt=0, description="Seconds a request to the issuer may take.")
    flow_ttl_s: float = Field(
        600.0, gt=0, description="Seconds a user has to come back from the issuer's page."
    )

    @property
    def enabled(self) -> bool:
        """Whether OIDC sign-in is configured."""
        return bool(self.issuer and self.client_id)


class TrialSettings(BaseModel):
    """The trial chat (``/chat``): what a visitor without an account may ask of the pool."""

    messages_per_ip: int = Field(
        30, ge=1, description="Trial messages one client address may send within the window."
    )
    messages_per_browser: int = Field(
        10,
        ge=1,
        description="Trial messages one browser (its trial cookie) may send within the window.",
    )
    window_s: float = Field(
        3_600.0, gt=0, description="Seconds over which trial messages are counted."
    )
    max_tokens: int = Field(
        256, ge=1, le=4096, description="Longest answer, in tokens, of one trial message."
    )
    max_message_chars: int = Field(
        2_000, ge=1, le=100_000, description="Longest message a visitor may send, in characters."
    )


class WebSettings(BaseModel):
    """The hub's web pages: sign-in, sessions and the mails they send."""

    public_url: str = Field(
        "http://127.0.0.1:8420",
        pattern=r"^https?://[^/\s]+(/[^\s]*)?$",
        description="The URL people reach the hub at (behind a proxy: the proxy's). Links in "
        "mails and the OIDC redirect URI are built from it, never from a request's Host; "
        "`https://` also marks the session cookie Secure.",
    )
    session_ttl_s: float = Field(
        1_209_600.0, gt=0, description="Seconds a browser session lasts (default 14 days)."
    )
    login_window_s: float = Field(
        900.0, gt=0, description="Seconds over which failed sign-ins are counted."
    )
    login_max_failures_ip: int = Field(
        20, ge=1, description="Failed sign-ins from one address within the window before 429."
    )
    login_max_failures_account: int = Field(
        5, ge=1, description="Failed sign-ins on one account within the window before 429."
    )
    mail_link_ttl_s: float = Field(
        86_400.0, gt=0, description="Seconds a mailed verification or reset link stays valid."
    )
    mail_interval_s: float = Field(
        60.0,
        ge=0,
        description="Seconds before another mail of the same kind (verification, reset) may go "
        "to the same account: asking again sooner is refused, so nobody can flood an inbox.",
    )
    password_min_length: int = Field(10, ge=8, description="Fewest characters of a new password.")
    smtp_host: str | None = Field(
        None,
        description="SMTP server for verification and reset mails; unset: mails are "
        "only logged (development).",
    )
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP server port.")
    smtp_user: str | None = Field(None, description="SMTP login, if the server wants one.")
    smtp_password: SecretStr | None = Field(None, description="SMTP password.")
    smtp_from: str = Field("iamine@localhost", description="Sender address of the hub's mails.")
    smtp_starttls: bool = Field(
        True, description="Upgrade the SMTP connection with STARTTLS before sending."
    )
    smtp_timeout_s: float = Field(10.0, gt=0, description="Seconds one SMTP delivery may take.")
    oidc: OidcSettings = Field(default_factory=OidcSettings)
    trial: TrialSettings = Field(default_factory=TrialSettings)
    pool_events_interval_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Seconds between two looks at the pool by `GET /pool/events` (the "
        "molecule's stream); an event is sent only when something changed.",
    )

    @property
    def secure_cookies(self) -> bool:
        """Whether cookies carry ``Secure`` (the public URL is https)."""
        return self.public_url.startswith("https://")

    def link(self, path: str) -> str:
        """An absolute URL on the public URL (``path`` starts with ``/``)."""
        return self.public_url.rstrip("/") + path
