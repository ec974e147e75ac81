"""Composition root of the iamine hub: settings, CLI, app factory, auth, database, HTTP routes."""
