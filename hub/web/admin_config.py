"""The pool configuration editor (``/admin/config``): a form built from :class:`PoolConfig`.

Each field of the policy (nested models such as ``trust`` and ``ledger`` field by field) is one
form field whose tooltip is the field's own ``description``: the editor never restates the
settings' documentation, so it cannot drift from it. A number, text or switch is an input of
that kind; a list or a mapping is a JSON text area. The posted form is rebuilt into the same
document ``PUT /admin/api/pool-config`` takes and validated by the same model, then stored and
applied as the API does (:func:`inference.pool_config.save_pool_config`, ``set_config``).
"""

from __future__ import annotations

import json
import types
from dataclasses import dataclass
from typing import Any, Literal, Union, get_args, get_origin

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import HTMLResponse, RedirectResponse, Response

from hub.web.session import CsrfChecked, WebAdminDep, hub_state
from hub.web.templating import render
from inference.pool_config import PoolConfig, save_pool_config

router = APIRouter()

Widget = Literal["number", "integer", "text", "switch", "json"]


@dataclass(frozen=True)
class FormField:
    """One input of the editor: its dotted name, widget, current value as text, and tooltip."""

    name: str
    widget: Widget
    value: str
    tooltip: str
    optional: bool


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """The annotation without ``None``, and whether ``None`` was allowed."""
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return annotation, False


def _widget(annotation: Any) -> Widget:
    if annotation is bool:
        return "switch"
    if annotation is int:
        return "integer"
    if annotation is float:
        return "number"
    if annotation is str:
        return "text"
    return "json"


def form_fields(model: BaseModel, prefix: str = "") -> list[FormField]:
    """The editor's fields for ``model``'s current values, nested models flattened."""
    fields = []
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        annotation, optional = _unwrap(info.annotation)
        if isinstance(value, BaseModel) and not optional:
            fields.extend(form_fields(value, f"{prefix}{name}."))
            continue
        widget = _widget(annotation)
        if widget == "json":
            text = json.dumps(_plain(value), indent=1, ensure_ascii=False)
        elif widget == "switch":
            text = "on" if value else ""
        else:
            text = "" if value is None else str(value)
        tooltip = info.description or ""
        fields.append(FormField(prefix + name, widget, text, tooltip, optional))
    return fields


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class FormError(ValueError):
    """A posted field that is not of its kind (bad number, bad JSON)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def _parse(field: FormField, raw: str | None) -> Any:
    text = (raw or "").strip()
    if field.widget == "switch":
        return bool(raw)
    if not text and field.optional:
        return None
    try:
        if field.widget == "integer":
            return int(text)
        if field.widget == "number":
            return float(text)
        if field.widget == "json":
            return json.loads(text)
    except ValueError as exc:
        raise FormError(field.name, f"not a valid {field.widget} ({exc})") from None
    return raw or ""


def config_from_form(current: PoolConfig, form: dict[str, str]) -> PoolConfig:
    """The policy the posted form describes, validated like the API's; raise on a bad field."""
    document: dict[str, Any] = {}
    for field in form_fields(current):
        value = _parse(field, form.get(field.name))
        *parents, leaf = field.name.split(".")
        node = document
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return PoolConfig.model_validate(document)


def _errors(exc: ValidationError) -> list[str]:
    return [f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()]


@router.get("/admin/config")
async def config_page(request: Request, _: WebAdminDep) -> HTMLResponse:
    """The editor, filled with the policy in force."""
    config = hub_state(request).workers.config
    return render(request, "admin/config.html", {"fields": form_fields(config), "errors": []})


@router.post("/admin/config")
async def save_config(request: Request, _: WebAdminDep, __: CsrfChecked) -> Response:
    """Validate and apply the posted policy; on a bad field, the form again with the errors."""
    state = hub_state(request)
    posted = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    try:
        config = config_from_form(state.workers.config, posted)
    except FormError as exc:
        return _again(request, posted, [str(exc)])
    except ValidationError as exc:
        return _again(request, posted, _errors(exc))
    async with state.db.pool.acquire() as conn:
        await save_pool_config(conn, config)
    state.workers.set_config(config)
    return RedirectResponse("/admin/config?saved=1", status_code=303)


def _again(request: Request, posted: dict[str, str], errors: list[str]) -> HTMLResponse:
    fields = [
        FormField(f.name, f.widget, posted.get(f.name, ""), f.tooltip, f.optional)
        for f in form_fields(hub_state(request).workers.config)
    ]
    return render(request, "admin/config.html", {"fields": fields, "errors": errors}, 400)
