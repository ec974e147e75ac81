"""Settings: environment prefix, nested models, and documentation of every field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel

from hub.config import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _env_names(model: type[BaseModel], prefix: str) -> list[str]:
    names: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names += _env_names(annotation, f"{prefix}{name.upper()}__")
        else:
            names.append(f"{prefix}{name.upper()}")
    return names


def test_every_setting_is_documented_in_configuration_md() -> None:
    text = DOC.read_text()
    missing = [n for n in _env_names(Settings, "IAMINE_") if f"`{n}`" not in text]
    assert missing == [], f"undocumented settings in docs/configuration.md: {missing}"


def test_settings_read_the_iamine_prefix_and_nested_delimiter(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("IAMINE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("IAMINE_SERVER__PORT", "9999")
    monkeypatch.setenv("IAMINE_DATABASE_URL", "postgresql://u@h/db")
    settings = Settings()
    assert settings.data_dir == tmp_path
    assert settings.server.port == 9999
    assert settings.database_url is not None
    assert "postgresql" not in repr(settings.database_url)


def test_an_invalid_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IAMINE_SERVER__PORT", "70000")
    with pytest.raises(ValueError, match="port"):
        Settings()
