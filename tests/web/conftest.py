"""Web page fixtures: a live hub (tests/hub/conftest.py's), a local SMTP server, headless Chromium.

A module that needs other hub settings overrides ``hub_overrides`` as the hub tests do.
"""

from __future__ import annotations

from tests.hub.conftest import LiveHub, live_hub

__all__ = ["LiveHub", "live_hub"]
