"""The user's login profile: which hub, with which token (written by ``iamine login``).

A JSON file in the user's config directory (``$XDG_CONFIG_HOME/iamine/profile.json`` on Linux),
mode 0600 in a 0700 directory, since it holds a bearer token. ``--hub``/``--token`` (or
``IAMINE_HUB_URL``/``IAMINE_TOKEN``) override each field of it.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import platformdirs

from hub.client.errors import ClientError

PROFILE_NAME = "profile.json"


@dataclass(frozen=True)
class Profile:
    """A hub URL (its root, like ``http://127.0.0.1:8420``) and a user token."""

    hub_url: str
    token: str

    @property
    def token_hint(self) -> str:
        """The token's public prefix (``iam_<prefix>``), safe to print."""
        head = self.token.split("_")
        return "_".join(head[:2]) + "_…" if len(head) >= 3 else "(token)"


def profile_path() -> Path:
    """Where the profile lives: the platform's user config directory for ``iamine``."""
    return Path(platformdirs.user_config_dir("iamine", appauthor=False)) / PROFILE_NAME


def hub_root(url: str) -> str:
    """A hub URL as the client uses it: http(s), no trailing slash and no ``/v1``."""
    url = url.strip().rstrip("/")
    url = url.removesuffix("/v1")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ClientError(f"the hub URL must look like http://host:8420, not {url!r}")
    return url


def load_profile(path: Path | None = None) -> Profile | None:
    """The saved profile, or ``None`` when there is none."""
    path = path or profile_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Profile(hub_url=str(data["hub_url"]), token=str(data["token"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ClientError(f"the profile {path} is unreadable ({exc}); run `iamine login`") from exc


def save_profile(profile: Profile, path: Path | None = None) -> Path:
    """Write the profile atomically: directory 0700, file 0600 from its first byte."""
    path = path or profile_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    text = json.dumps({"hub_url": profile.hub_url, "token": profile.token}, indent=2) + "\n"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
    path.chmod(0o600)
    return path


def delete_profile(path: Path | None = None) -> bool:
    """Remove the profile; ``False`` if there was none."""
    try:
        (path or profile_path()).unlink()
    except FileNotFoundError:
        return False
    return True


def resolve_profile(hub: str | None, token: str | None) -> Profile:
    """The profile in force: explicit values (options or env vars) over the saved ones."""
    saved = load_profile()
    hub_url = hub or (saved.hub_url if saved else None)
    chosen = token or (saved.token if saved else None)
    if hub_url is None or chosen is None:
        raise ClientError(
            "not logged in: run `iamine login --hub URL`, or set IAMINE_HUB_URL and IAMINE_TOKEN"
        )
    return Profile(hub_root(hub_url), chosen.strip())
