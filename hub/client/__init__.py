"""``iamine`` as a user client: the login profile, an HTTP client of a hub, the chat session,
and the ready-made configurations of third-party agent clients (served by the hub).

The commands themselves are in ``hub/cli_client.py``; docs/clients.md describes both sides.
"""
