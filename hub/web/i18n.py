"""The pages' languages: gettext catalogs (English, French) and the reader's choice of one.

Catalogs are the ``.po`` files under ``hub/web/locales/<lang>/LC_MESSAGES/``, read with Babel
once per process (no compiled ``.mo`` is committed or built). A message's id is its English
text, so an entry missing from a catalog reads in English rather than as a key. The reader's
language is the ``lang`` cookie (set by ``POST /lang``), else the best of ``Accept-Language``,
else English. ``POST /lang`` sets the cookie (a year) and goes back to the page it came from.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path

from babel.messages.pofile import read_po
from fastapi import APIRouter, Form
from starlette.requests import Request
from starlette.responses import RedirectResponse

from hub.web.session import CsrfChecked, hub_state, local_path

LOCALES_DIR = Path(__file__).parent / "locales"
LANGUAGES = ("en", "fr")
DEFAULT_LANGUAGE = "en"
LANG_COOKIE = "lang"
LANG_COOKIE_MAX_AGE_S = 365 * 24 * 3600

router = APIRouter()


@cache
def catalog(lang: str) -> dict[str, str]:
    """The translations of ``lang`` (message id → text), read from its ``.po`` file once."""
    if lang not in LANGUAGES:
        raise ValueError(f"no catalog for language {lang!r} (known: {', '.join(LANGUAGES)})")
    path = LOCALES_DIR / lang / "LC_MESSAGES" / "messages.po"
    with path.open("rb") as po:
        messages = read_po(po, locale=lang)
    return {
        str(m.id): str(m.string)
        for m in messages
        if m.id and isinstance(m.id, str) and isinstance(m.string, str) and m.string
    }


def translator(lang: str) -> Callable[[str], str]:
    """The gettext function of ``lang``: a message in that language, or the English text."""
    messages = catalog(lang if lang in LANGUAGES else DEFAULT_LANGUAGE)

    def gettext(message: str) -> str:
        return messages.get(message, message)

    return gettext


def _accepted(header: str) -> list[tuple[float, str]]:
    """``Accept-Language`` entries as (quality, primary language), unparseable ones dropped."""
    entries = []
    for part in header.split(","):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                continue
        primary = tag.strip().split("-")[0].lower()
        if primary:
            entries.append((quality, primary))
    return entries


def pick_language(request: Request) -> str:
    """The reader's language: the ``lang`` cookie, else ``Accept-Language``, else English."""
    chosen = request.cookies.get(LANG_COOKIE)
    if chosen in LANGUAGES:
        return chosen
    ranked = sorted(_accepted(request.headers.get("accept-language", "")), key=lambda e: -e[0])
    for quality, primary in ranked:
        if quality > 0 and primary in LANGUAGES:
            return primary
    return DEFAULT_LANGUAGE


@router.post("/lang")
async def choose_language(
    request: Request, _: CsrfChecked, lang: str = Form(), next: str = Form("/")
) -> RedirectResponse:
    """Remember the reader's language in the ``lang`` cookie and go back to their page."""
    if lang not in LANGUAGES:
        lang = DEFAULT_LANGUAGE
    response = RedirectResponse(local_path(next), status_code=303)
    response.set_cookie(
        LANG_COOKIE,
        lang,
        max_age=LANG_COOKIE_MAX_AGE_S,
        samesite="lax",
        secure=hub_state(request).settings.web.secure_cookies,
    )
    return response
