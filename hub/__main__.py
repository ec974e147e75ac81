"""``python -m hub`` runs the ``iamine`` CLI (used to start the hub's local worker process)."""

from hub.cli import app

app()
