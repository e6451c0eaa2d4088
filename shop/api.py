"""JSON API plumbing shared by every area: endpoints, auth, errors and the OpenAPI document."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import wraps
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request
from flask_login import current_user
from jinja2 import TemplateNotFound
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import HTTPException

from shop.accounts.models import Role, User
from shop.errors import Forbidden, ShopError, Unauthorized
from shop.extensions import csrf, db

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] = []


class ErrorResponse(BaseModel):
    error: ErrorBody


@dataclass
class Endpoint:
    rule: str
    method: str
    summary: str
    tag: str
    body: type[BaseModel] | None
    query: type[BaseModel] | None
    response: type[BaseModel] | None
    status: int
    roles: tuple[Role, ...] | None
    errors: tuple[int, ...] = field(default_factory=tuple)
    form: type[BaseModel] | None = None
    files: tuple[str, ...] = ()


ENDPOINTS: list[Endpoint] = []


def error_response(
    status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message, "details": details or []}}), status


def api_blueprint(name: str, import_name: str) -> Blueprint:
    """A blueprint under /api/v1: bearer tokens need no CSRF token, session cookies do."""
    bp = Blueprint(name, import_name, url_prefix=API_PREFIX)
    csrf.exempt(bp)
    return bp


def _authenticated_user(roles: tuple[Role, ...] | None) -> User | None:
    if roles is None:
        return None
    if not current_user.is_authenticated:
        raise Unauthorized("请先登录或提供有效的令牌。")
    user: User = current_user._get_current_object()
    if roles and not user.has_role(*roles):
        raise Forbidden("你的账号无权执行此操作。")
    if request.method not in SAFE_METHODS and "Authorization" not in request.headers:
        csrf.protect()
    return user


def endpoint(
    bp: Blueprint,
    rule: str,
    method: str,
    *,
    summary: str,
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    response: type[BaseModel] | None = None,
    status: int = 200,
    roles: tuple[Role, ...] | None = (),
    errors: tuple[int, ...] = (),
    form: type[BaseModel] | None = None,
    files: tuple[str, ...] = (),
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a JSON endpoint: parse body and query with pydantic, check roles, serialise.

    `roles=None` is public, `()` any signed-in person, otherwise one of the roles given.
    `form` describes a multipart upload: its fields are parsed, and its `file` part handed over.
    `files` names the media types of a view that answers with a file instead of JSON.
    """

    def decorate(view: Callable[..., Any]) -> Callable[..., Any]:
        ENDPOINTS.append(
            Endpoint(
                API_PREFIX + rule,
                method.lower(),
                summary,
                bp.name.removesuffix("_api"),
                body,
                query,
                response,
                status,
                roles,
                errors,
                form,
                files,
            )
        )

        @wraps(view)
        def wrapper(**kwargs: Any) -> Any:
            user = _authenticated_user(roles)
            if user is not None:
                kwargs["user"] = user
            if body is not None:
                payload = request.get_json(silent=True)
                if payload is None:
                    return error_response(400, "bad_request", "请求体必须是 JSON。")
                kwargs["body"] = body.model_validate(payload)
            if query is not None:
                kwargs["query"] = query.model_validate(request.args.to_dict())
            if form is not None:
                kwargs["form"] = form.model_validate(request.form.to_dict())
                kwargs["upload"] = request.files.get("file")
            result = view(**kwargs)
            if isinstance(result, BaseModel):
                return jsonify(result.model_dump(mode="json", by_alias=True)), status
            return result

        bp.add_url_rule(rule, view.__name__, wrapper, methods=[method])
        return wrapper

    return decorate


def error_page(status: int, message: str | None) -> tuple[str, int]:
    try:
        return render_template("error.html", status=status, message=message), status
    except TemplateNotFound:
        return message or "", status


def register_error_handlers(app: Flask) -> None:
    def is_api() -> bool:
        return request.path.startswith(API_PREFIX)

    @app.errorhandler(ShopError)
    def shop_error(exc: ShopError) -> Any:
        db.session.rollback()
        if is_api():
            return error_response(exc.status, exc.code, exc.message, exc.details)
        return error_page(exc.status, exc.message)

    @app.errorhandler(ValidationError)
    def invalid_payload(exc: ValidationError) -> Any:
        details = [
            {"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        return error_response(422, "invalid_input", "请求内容有误。", details)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        if not is_api():
            return exc if (exc.code or 500) < 400 else error_page(exc.code or 500, exc.description)
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        db.session.rollback()
        log.exception("unhandled error on %s %s", request.method, request.path)
        if is_api():
            return error_response(500, "internal_error", "服务器内部错误，请稍后重试。")
        return error_page(500, "服务器内部错误，请稍后重试。")


def _schema(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def openapi_document() -> dict[str, Any]:
    components: dict[str, Any] = {}
    error_ref = _schema(ErrorResponse, components)
    paths: dict[str, dict[str, Any]] = {}
    for ep in ENDPOINTS:
        path = ep.rule.replace("<", "{").replace(">", "}")
        for converter in ("int:", "string:"):
            path = path.replace("{" + converter, "{")
        operation: dict[str, Any] = {
            "summary": ep.summary,
            "tags": [ep.tag],
            "operationId": f"{ep.method}_{ep.rule}".replace("/", "_")
            .replace("<", "")
            .replace(">", "")
            .replace(":", "_"),
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in _path_params(path)
            ],
            "responses": {},
        }
        if ep.query is not None:
            props = ep.query.model_json_schema().get("properties", {})
            operation["parameters"] += [
                {"name": name, "in": "query", "required": False, "schema": prop}
                for name, prop in props.items()
            ]
        if ep.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _schema(ep.body, components)}},
            }
        if ep.form is not None:
            schema = _schema(ep.form, components)
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "allOf": [
                                schema,
                                {
                                    "type": "object",
                                    "required": ["file"],
                                    "properties": {"file": {"type": "string", "format": "binary"}},
                                },
                            ]
                        }
                    }
                },
            }
        ok: dict[str, Any] = {"description": "OK"}
        if ep.response is not None:
            ok["content"] = {"application/json": {"schema": _schema(ep.response, components)}}
        if ep.files:
            binary = {"schema": {"type": "string", "format": "binary"}}
            ok["content"] = {media_type: binary for media_type in ep.files}
        operation["responses"][str(ep.status)] = ok
        statuses = set(ep.errors)
        if ep.roles is not None:
            operation["security"] = [{"bearer": []}, {"session": []}]
            statuses |= {401} | ({403} if ep.roles else set())
        if ep.body is not None or ep.query is not None or ep.form is not None:
            statuses |= {422}
        for code in sorted(statuses):
            operation["responses"][str(code)] = {
                "description": "Error",
                "content": {"application/json": {"schema": error_ref}},
            }
        paths.setdefault(path, {})[ep.method] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "惠黔消费帮扶商城 API", "version": "1"},
        "servers": [{"url": current_app.config["SHOP_BASE_URL"]}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "session": {"type": "apiKey", "in": "cookie", "name": "session"},
            },
        },
    }


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]
