"""JSON API plumbing shared by every area: endpoints, auth, errors and the OpenAPI document."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, TypeVar

from flask import Blueprint, Flask, Response, current_app, jsonify, render_template, request
from flask_login import current_user
from jinja2 import TemplateNotFound
from kombu.exceptions import OperationalError as BrokerUnavailable
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from redis.exceptions import ConnectionError as RedisUnavailable
from redis.exceptions import TimeoutError as RedisTimeout
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from shop.accounts.models import Role, User
from shop.errors import Forbidden, InvalidInput, NotFound, ShopError, TooLarge, Unauthorized
from shop.extensions import csrf, db
from shop.spreadsheets import MAX_FILE_BYTES

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Every id, count and amount the API reads lands in (or is compared with) a PostgreSQL `integer`
# column, and PostgreSQL text cannot hold NUL: input beyond either is bad input (or, in a path,
# names no row) rather than a database error.
DB_INT_MAX = 2**31 - 1
M = TypeVar("M", bound=BaseModel)
# A service the shop leans on dropped it mid-request (a database connection cut, Redis
# restarting): nothing uncommitted was kept, so the answer is "try again", not an alarm.
UNAVAILABLE = "服务暂时不可用，请稍后重试。"
RETRY_AFTER_SECONDS = 5


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
    signed: str | None = None


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
    signed: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a JSON endpoint: parse body and query with pydantic, check roles, serialise.

    `roles=None` is public, `()` any signed-in person, otherwise one of the roles given.
    `form` describes a multipart upload: its fields are parsed, and its `file` part handed over.
    `files` names the media types of a view that answers with a file instead of JSON.
    `signed` names the header signing a JSON body that the view reads and verifies itself.
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
                signed,
            )
        )

        @wraps(view)
        def wrapper(**kwargs: Any) -> Any:
            user = _authenticated_user(roles)
            if any(_unstorable(value) for value in kwargs.values()):
                raise NotFound("没有这条记录。")
            if user is not None:
                kwargs["user"] = user
            if body is not None:
                payload = request.get_json(silent=True)
                if payload is None:
                    return error_response(400, "bad_request", "请求体必须是 JSON。")
                kwargs["body"] = _storable(body.model_validate(payload))
            if query is not None:
                kwargs["query"] = _storable(query.model_validate(request.args.to_dict()))
            if form is not None:
                kwargs["form"] = _storable(form.model_validate(request.form.to_dict()))
                kwargs["upload"] = request.files.get("file")
            result = view(**kwargs)
            if isinstance(result, BaseModel):
                return jsonify(result.model_dump(mode="json", by_alias=True)), status
            return result

        bp.add_url_rule(rule, view.__name__, wrapper, methods=[method])
        return wrapper

    return decorate


def _unstorable(value: Any) -> str | None:
    """Why the database could not hold this value, if it could not."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > DB_INT_MAX:
        return f"数值超出范围（绝对值不能超过 {DB_INT_MAX}）。"
    if isinstance(value, str) and "\x00" in value:
        return "不能包含 NUL 字符。"
    return None


def _unstorable_fields(value: Any, path: tuple[str | int, ...]) -> Iterator[dict[str, str]]:
    problem = _unstorable(value)
    if problem:
        yield {"field": ".".join(str(p) for p in path), "message": problem}
    elif isinstance(value, BaseModel):
        for name, info in type(value).model_fields.items():
            yield from _unstorable_fields(getattr(value, name), (*path, info.alias or name))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _unstorable_fields(item, (*path, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _unstorable_fields(key, (*path, str(key)))
            yield from _unstorable_fields(item, (*path, str(key)))


def _storable(model: M) -> M:
    """The parsed input, once the database could hold every value in it."""
    problems = list(_unstorable_fields(model, ()))
    if problems:
        raise InvalidInput("请求内容有误。", details=problems)
    return model


def is_api() -> bool:
    """This request is the JSON API's (errors answered in JSON), not a page's."""
    return request.path.startswith(API_PREFIX)


def error_page(status: int, message: str | None) -> tuple[str, int]:
    try:
        return render_template("error.html", status=status, message=message), status
    except TemplateNotFound:
        return message or "", status


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ShopError)
    def shop_error(exc: ShopError) -> Any:
        db.session.rollback()
        response: tuple[Any, int]
        if is_api():
            response = error_response(exc.status, exc.code, exc.message, exc.details)
        else:
            response = error_page(exc.status, exc.message)
        return _with_retry_after(response) if exc.status == 503 else response

    @app.errorhandler(ValidationError)
    def invalid_payload(exc: ValidationError) -> Any:
        details = [
            {"field": ".".join(str(p) for p in err["loc"]), "message": err["msg"]}
            for err in exc.errors(include_url=False, include_input=False)
        ]
        return error_response(422, "invalid_input", "请求内容有误。", details)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> Any:
        limit = current_app.config["MAX_CONTENT_LENGTH"] / 1024 / 1024
        return shop_error(
            TooLarge(
                f"上传的内容超过了 {limit:g} MB 的上限，没有处理。订单文件和柜台销售文件"
                f"每个不能超过 {MAX_FILE_BYTES // 1024 // 1024} MB，请分成几个文件上传。"
            )
        )

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        if not is_api():
            return exc if (exc.code or 500) < 400 else error_page(exc.code or 500, exc.description)
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(exc.code or 500, code, exc.description or exc.name)

    @app.teardown_appcontext
    def close_session(_exc: BaseException | None) -> None:
        # Runs before Flask-SQLAlchemy's own teardown (registered earlier), which then finds
        # nothing to close: its rollback on a cut connection would escape as a bare 500.
        _end_session(db.session.remove)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        _end_session(db.session.rollback)
        if _unavailable(exc):
            log.warning("service unavailable on %s %s: %s", request.method, request.path, exc)
            if is_api():
                return _with_retry_after(error_response(503, "service_unavailable", UNAVAILABLE))
            return _with_retry_after(error_page(503, UNAVAILABLE))
        log.exception("unhandled error on %s %s", request.method, request.path)
        if is_api():
            return error_response(500, "internal_error", "服务器内部错误，请稍后重试。")
        return error_page(500, "服务器内部错误，请稍后重试。")


def _unavailable(exc: BaseException | None) -> bool:
    """A lost connection to the database, the broker or Redis, as opposed to a bug.

    Followed through explicit causes: Celery's result consumer reports a Redis it cannot reach
    as a RuntimeError raised from the connection error.
    """
    while exc is not None:
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            return True
        if isinstance(exc, OperationalError | BrokerUnavailable | RedisUnavailable | RedisTimeout):
            return True
        exc = exc.__cause__
    return False


def _end_session(end: Callable[[], None]) -> None:
    """Roll back (or close) the session. On a connection the server has cut even the rollback
    fails: the connection is then invalidated (the pool replaces it) and the session dropped."""
    try:
        end()
    except SQLAlchemyError:
        log.warning("ending the session failed; dropping it", exc_info=True)
        db.session.registry.clear()


def _with_retry_after(response: tuple[Any, int]) -> tuple[Any, int, dict[str, str]]:
    body, status = response
    return body, status, {"Retry-After": str(RETRY_AFTER_SECONDS)}


ModelUse = tuple[type[BaseModel], JsonSchemaMode]
REF_PREFIX = "#/components/schemas/"


def _components(endpoints: list[Endpoint]) -> tuple[dict[Any, dict[str, Any]], dict[str, Any]]:
    """Every model the API reads (as it validates) or writes (as it serialises), in one namespace:
    two models of the same name in different areas get distinct names instead of overwriting."""
    uses: dict[ModelUse, None] = {(ErrorResponse, "serialization"): None}
    for ep in endpoints:
        for model in (ep.body, ep.form):
            if model is not None:
                uses[(model, "validation")] = None
        if ep.response is not None:
            uses[(ep.response, "serialization")] = None
    refs, schemas = models_json_schema(list(uses), ref_template=REF_PREFIX + "{model}")
    return _renamed(dict(refs)), _renamed(schemas.get("$defs", {}))


def _renamed(value: Any) -> Any:
    """Pydantic names one of two alike-named models by its module (`shop__admin__api__X`): call it
    by its area instead (`AdminX`)."""
    if isinstance(value, dict):
        return {_area_name(k): _renamed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(item) for item in value]
    if isinstance(value, str) and value.startswith(REF_PREFIX):
        return REF_PREFIX + _area_name(value.removeprefix(REF_PREFIX))
    return value


def _area_name(name: Any) -> Any:
    if not isinstance(name, str) or not name.startswith("shop__"):
        return name
    parts = name.split("__")
    return parts[1].title() + parts[-1]


def _path_and_parameters(rule: str) -> tuple[str, list[dict[str, Any]]]:
    """The OpenAPI path of a Flask rule and its typed path parameters."""
    parts: list[str] = []
    parameters: list[dict[str, Any]] = []
    for part in rule.split("/"):
        if not part.startswith("<"):
            parts.append(part)
            continue
        converter, _, name = part[1:-1].rpartition(":")
        schema: dict[str, Any] = (
            {"type": "integer", "minimum": 0, "maximum": DB_INT_MAX}
            if converter == "int"
            else {"type": "string", "minLength": 1}
        )
        parts.append("{" + name + "}")
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    return "/".join(parts), parameters


def _error_statuses(ep: Endpoint, path_parameters: list[dict[str, Any]]) -> set[int]:
    """Every error status the endpoint can answer with, besides those its view declares."""
    statuses = set(ep.errors) | {503}  # the database (or Redis, the broker) dropped the connection
    if ep.roles is not None:
        statuses |= {401} | ({403} if ep.roles else set())
    if path_parameters:
        statuses.add(404)  # a path parameter that names nothing, or is not even a number
    if ep.body is not None:
        statuses |= {400, 422}  # not JSON at all; JSON of the wrong shape
    if ep.signed is not None:
        statuses.add(400)  # no signature, or not one over this body
    if ep.query is not None or ep.form is not None:
        statuses.add(422)
    if ep.body is not None or ep.form is not None or ep.signed is not None:
        statuses.add(413)  # a body over MAX_CONTENT_LENGTH
    return statuses


RETRY_AFTER_HEADER = {
    "description": "seconds to wait before trying again",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}


def openapi_document() -> dict[str, Any]:
    refs, components = _components(ENDPOINTS)
    error_json = {"application/json": {"schema": refs[(ErrorResponse, "serialization")]}}
    paths: dict[str, dict[str, Any]] = {}
    for ep in ENDPOINTS:
        path, path_parameters = _path_and_parameters(ep.rule)
        operation: dict[str, Any] = {
            "summary": ep.summary,
            "tags": [ep.tag],
            "operationId": f"{ep.method}_{ep.rule}".replace("/", "_")
            .replace("<", "")
            .replace(">", "")
            .replace(":", "_"),
            "parameters": list(path_parameters),
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
                "content": {"application/json": {"schema": refs[(ep.body, "validation")]}},
            }
        if ep.signed is not None:
            operation["parameters"].append(
                {"name": ep.signed, "in": "header", "required": False, "schema": {"type": "string"}}
            )
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
        if ep.form is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "allOf": [
                                refs[(ep.form, "validation")],
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
            ok["content"] = {"application/json": {"schema": refs[(ep.response, "serialization")]}}
        if ep.files:
            binary = {"schema": {"type": "string", "format": "binary"}}
            ok["content"] = {media_type: binary for media_type in ep.files}
        operation["responses"][str(ep.status)] = ok
        if ep.roles is not None:
            operation["security"] = [{"bearer": []}, {"session": []}]
        for code in sorted(_error_statuses(ep, path_parameters)):
            answer: dict[str, Any] = {"description": "Error", "content": error_json}
            if code in (429, 503):
                answer["headers"] = {"Retry-After": RETRY_AFTER_HEADER}
            operation["responses"][str(code)] = answer
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
