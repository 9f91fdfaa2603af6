"""JSON-RPC 2.0 dispatch for the control API: bytes of one line in, bytes of one line out.

Rules of this file:
1. No sockets. `Dispatcher.handle_payload` takes the bytes of one request line and returns
   the bytes of the reply line (no trailing newline) or None when the spec says to stay
   silent (a notification, a batch of notifications). The server in `server.py` does the I/O.
2. Client input never raises out of `handle_payload`: malformed JSON, bad shapes and bad
   params all become error objects (-32700, -32600, -32601, -32602).
3. Handlers are async and get their params as keyword arguments, already checked against the
   schema declared at registration. A handler answers an application error by raising
   `RpcError`; any other exception is a bug in that handler and becomes -32603 (see `_call`).
4. Every reply is bounded: batches are capped (BATCH_SIZE_MAX) and echoed names are clipped.

Batch elements run one after another, in order. The spec allows any order or concurrency;
sequential keeps replies deterministic and a batch's cost bounded by one connection's task.
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import structlog

from prsm_node.control.protocol import (
    BATCH_SIZE_MAX,
    JSON_TYPE_NAMES,
    JSONRPC_VERSION,
    ErrorCode,
    RequestId,
    RpcError,
    check_request_shape,
    clip,
    encode,
    error_response,
    json_type_name,
)

__all__ = ["REQUIRED", "Dispatcher", "ErrorCode", "Handler", "Param", "RpcError"]

log = structlog.get_logger()

Handler = Callable[..., Awaitable[object]]

_PARAM_TYPES: tuple[type, ...] = (str, int, bool, float, list, dict)


class _Required:
    """Sentinel type: a Param without a default must be given by the caller."""

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()


class InvalidParams(Exception):
    """The params of one call do not fit the method's schema; the message names the param."""


def _value_fits(kind: type, value: object) -> bool:
    """JSON-level type check: bool is not an int, and an integer is a valid float."""
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


@dataclass(frozen=True, slots=True)
class Param:
    """One named parameter of a method: its JSON type and, if optional, its default.

    A param whose default is None also accepts an explicit null.
    """

    name: str
    kind: type
    default: object = REQUIRED

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"param name {self.name!r} must be a Python identifier")
        if self.kind not in _PARAM_TYPES:
            raise ValueError(f"param {self.name!r}: kind must be one of {_PARAM_TYPES}")
        if self.default is REQUIRED or self.default is None:
            return
        if not _value_fits(self.kind, self.default):
            raise ValueError(f"param {self.name!r}: default does not match {self.kind.__name__}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def convert(self, value: object) -> object:
        """The value checked against the schema; raises InvalidParams naming this param."""
        if value is None and self.default is None:
            return None
        if not _value_fits(self.kind, value):
            expected = JSON_TYPE_NAMES[self.kind]
            raise InvalidParams(
                f"param {self.name!r} must be {_article(expected)} {expected}, "
                f"got {json_type_name(value)}"
            )
        return float(value) if self.kind is float else value  # type: ignore[arg-type]

    def default_value(self) -> object:
        """A fresh copy of the default, so a handler mutating it cannot change later calls."""
        return copy.deepcopy(self.default)


def _article(noun: str) -> str:
    return "an" if noun[0] in "aeiou" else "a"


@dataclass(frozen=True, slots=True)
class _Method:
    name: str
    params: tuple[Param, ...]
    handler: Handler

    def bind(self, raw_params: object) -> dict[str, object]:
        """Keyword arguments for the handler from by-position or by-name params."""
        if raw_params is None:
            given: dict[str, object] = {}
        elif isinstance(raw_params, list):
            given = self._by_position(raw_params)
        else:
            assert isinstance(raw_params, dict)  # check_request_shape guarantees it
            given = raw_params
        known = {param.name for param in self.params}
        unknown = sorted(name for name in given if name not in known)
        if unknown:
            raise InvalidParams(f"unknown param {clip(unknown[0])!r}; {self._signature()}")
        arguments: dict[str, object] = {}
        for param in self.params:
            if param.name in given:
                arguments[param.name] = param.convert(given[param.name])
            elif param.required:
                raise InvalidParams(f"missing required param {param.name!r}; {self._signature()}")
            else:
                arguments[param.name] = param.default_value()
        return arguments

    def _by_position(self, values: list[object]) -> dict[str, object]:
        if len(values) > len(self.params):
            raise InvalidParams(
                f"too many params: got {len(values)}, at most {len(self.params)}; "
                f"{self._signature()}"
            )
        return {param.name: value for param, value in zip(self.params, values, strict=False)}

    def _signature(self) -> str:
        names = [param.name if param.required else f"{param.name}?" for param in self.params]
        return f"{self.name} takes ({', '.join(names)})"


class _ParseError(Exception):
    pass


def _reject_constant(name: str) -> object:
    raise _ParseError(f"{name} is not valid JSON")


def _decode(raw: bytes) -> object:
    """Strict JSON: UTF-8 only, no NaN/Infinity; limits of the parser become parse errors."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise _ParseError(f"request is not UTF-8 (byte {error.start})") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise _ParseError(f"{error.msg} at character {error.pos}") from None
    except ValueError as error:  # e.g. an integer over the interpreter's digit limit
        raise _ParseError(f"unreadable value: {clip(str(error))}") from None
    except RecursionError:
        raise _ParseError("nested too deeply") from None


class Dispatcher:
    """The registry of control methods and the one entry point for request lines."""

    def __init__(self) -> None:
        self._methods: dict[str, _Method] = {}

    def register(self, name: str, handler: Handler, params: Sequence[Param] = ()) -> None:
        """Add method `name`; `handler(**params)` is awaited with the checked params.

        Raises at registration (our bug, not the caller's) on a duplicate or reserved name, a
        sync handler, or a handler whose signature cannot take the declared params.
        """
        if name in self._methods:
            raise ValueError(f"method {name!r} is already registered")
        if name.startswith("rpc."):
            raise ValueError(f"method {name!r}: names starting with 'rpc.' are reserved")
        if not inspect.iscoroutinefunction(handler):
            raise TypeError(f"method {name!r}: handler must be an async function")
        names = [param.name for param in params]
        if len(set(names)) != len(names):
            raise ValueError(f"method {name!r}: duplicate param names {names}")
        try:
            inspect.signature(handler).bind(**dict.fromkeys(names))
        except TypeError as error:
            raise TypeError(f"method {name!r}: handler cannot take {names}: {error}") from None
        self._methods[name] = _Method(name, tuple(params), handler)

    def method_names(self) -> list[str]:
        return sorted(self._methods)

    async def handle_payload(self, raw: bytes) -> bytes | None:
        """The reply line (without newline) to one request line, or None for no reply."""
        try:
            message = _decode(raw)
        except _ParseError as error:
            return encode(error_response(None, ErrorCode.PARSE_ERROR, f"parse error: {error}"))
        if isinstance(message, list):
            return await self._handle_batch(message)
        return await self._handle_one(message)

    async def _handle_batch(self, batch: list[object]) -> bytes | None:
        if not batch:
            return encode(error_response(None, ErrorCode.INVALID_REQUEST, "empty batch"))
        if len(batch) > BATCH_SIZE_MAX:
            message = f"batch too large: {len(batch)} requests, at most {BATCH_SIZE_MAX}"
            return encode(error_response(None, ErrorCode.INVALID_REQUEST, message))
        replies = []
        for element in batch:
            reply = await self._handle_one(element)
            if reply is not None:
                replies.append(reply)
        if not replies:
            return None
        return b"[" + b",".join(replies) + b"]"

    async def _handle_one(self, message: object) -> bytes | None:
        """One request object: an encoded response, or None for a notification."""
        request_id, problem = check_request_shape(message)
        if problem is not None:
            return encode(error_response(request_id, ErrorCode.INVALID_REQUEST, problem))
        assert isinstance(message, dict)
        notification = "id" not in message
        name: str = message["method"]
        method = self._methods.get(name)
        if method is None:
            reply = error_response(
                request_id, ErrorCode.METHOD_NOT_FOUND, f"method not found: {clip(name)!r}"
            )
            return None if notification else encode(reply)
        try:
            arguments = method.bind(message.get("params"))
        except InvalidParams as error:
            reply = error_response(
                request_id, ErrorCode.INVALID_PARAMS, f"invalid params for {name!r}: {error}"
            )
            return None if notification else encode(reply)
        reply_bytes = await self._call(method, arguments, request_id)
        return None if notification else reply_bytes

    async def _call(
        self, method: _Method, arguments: dict[str, object], request_id: RequestId
    ) -> bytes:
        """Run the handler and encode its answer.

        The broad `except Exception` below is the one place the node catches everything,
        on purpose: a handler is application code reached by any local user of the socket, and
        a bug in one method (a KeyError in `peers_list`, say) must cost that one call a -32603
        and a logged traceback, not take down the control server and with it the node. It does
        not catch BaseException, so trio's Cancelled and KeyboardInterrupt still propagate.
        """
        try:
            result = await method.handler(**arguments)
            response: dict[str, object] = {
                "jsonrpc": JSONRPC_VERSION,
                "id": request_id,
                "result": result,
            }
        except RpcError as error:
            response = {"jsonrpc": JSONRPC_VERSION, "id": request_id, "error": error.error_object()}
        except Exception:  # the one broad except in the node: see the docstring
            log.exception("control.handler_failed", method=method.name)
            return encode(_internal_error(request_id, method.name))
        try:
            return encode(response)
        except (TypeError, ValueError, RecursionError):
            log.exception("control.reply_not_encodable", method=method.name)
            return encode(_internal_error(request_id, method.name))


def _internal_error(request_id: RequestId, name: str) -> dict[str, object]:
    message = f"internal error in method {name!r}; the node log has the details"
    return error_response(request_id, ErrorCode.INTERNAL_ERROR, message)
