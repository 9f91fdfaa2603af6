"""JSON-RPC 2.0 message rules shared by the control server and its client.

Rules of this file:
1. Standard library only. The CLI imports the client, which imports this file, and the CLI
   must start fast: no trio, no structlog, no libp2p here.
2. It decides what a well-formed request is, once. The server (`jsonrpc.py`) answers by these
   rules and the client (`client.py`) predicts from them whether a payload gets a reply (a
   valid notification gets none), so both sides can never disagree.

Spec: https://www.jsonrpc.org/specification (sections 4 to 6).
"""

from __future__ import annotations

import json
from enum import IntEnum

JSONRPC_VERSION = "2.0"

# A batch is handled one element after another on the connection's task; 100 keeps one batch
# from holding a connection for long and bounds the reply. geth has the same kind of cap
# (BatchRequestLimit, 1000 by default, for its HTTP and WebSocket servers).
BATCH_SIZE_MAX = 100

# Names echoed in error messages are cut to this, so a hostile method name cannot inflate a reply.
ECHO_CHARS_MAX = 80

RequestId = str | int | None


class ErrorCode(IntEnum):
    """Error codes: the spec's (-32768..-32000 reserved) and our server-defined -32000..-32099."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    # Server-defined (the spec reserves -32000..-32099 for "implementation-defined server-errors").
    NODE_ERROR = -32000
    SERVER_BUSY = -32001
    PEER_CONNECT_FAILED = -32002
    NODE_STOPPING = -32003


class RpcError(Exception):
    """Raised by a method handler to answer with an error object a user can act on.

    `message` is shown to the user as is: say what went wrong and what to do about it.
    `data` is optional, JSON-encodable detail.
    """

    def __init__(self, code: int, message: str, data: object = None) -> None:
        if isinstance(code, bool) or not isinstance(code, int):
            raise TypeError(f"RpcError code must be an int, got {type(code).__name__}")
        if not isinstance(message, str):
            raise TypeError(f"RpcError message must be a str, got {type(message).__name__}")
        super().__init__(message)
        self.code = int(code)
        self.message = message
        self.data = data

    def error_object(self) -> dict[str, object]:
        """The `error` member of a response (spec section 5.1)."""
        return error_object(self.code, self.message, self.data)


def error_object(code: int, message: str, data: object = None) -> dict[str, object]:
    """An error object; `data` is left out when None, as the spec makes it optional."""
    error: dict[str, object] = {"code": int(code), "message": message}
    if data is not None:
        error["data"] = data
    return error


def error_response(request_id: RequestId, code: int, message: str) -> dict[str, object]:
    """A whole error response for `request_id` (None when it could not be read)."""
    return {"jsonrpc": JSONRPC_VERSION, "id": request_id, "error": error_object(code, message)}


def encode(message: object) -> bytes:
    """Compact, one-line, ASCII JSON: no newline can appear inside it, and no NaN/Infinity.

    ensure_ascii also keeps lone surrogates from a request (valid in JSON text, not in UTF-8)
    from breaking the encoding. Raises TypeError/ValueError/RecursionError on what JSON cannot
    carry; callers decide what that means.
    """
    return json.dumps(message, separators=(",", ":"), allow_nan=False).encode("ascii")


def is_valid_id(value: object) -> bool:
    """Spec section 4: an id is a string, a number or null; we refuse fractions and booleans.

    The spec says numbers "SHOULD NOT contain fractional parts"; floats do not round-trip
    exactly and bool is an int subclass in Python, so both are refused.
    """
    return (
        value is None
        or isinstance(value, str)
        or (isinstance(value, int) and not isinstance(value, bool))
    )


def check_request_shape(message: object) -> tuple[RequestId, str | None]:
    """(id to answer with, reason the request is invalid or None if well-formed).

    The id is echoed whenever it is readable, even if another member is wrong, so a client
    can match the error to its request; it is None when it is missing or not a valid id.
    """
    if not isinstance(message, dict):
        return None, f"request must be a JSON object, got {json_type_name(message)}"
    raw_id = message.get("id")
    if not is_valid_id(raw_id):
        return None, "id must be a string, an integer or null"
    request_id: RequestId = raw_id  # type: ignore[assignment]
    if message.get("jsonrpc") != JSONRPC_VERSION:
        return request_id, 'member "jsonrpc" must be exactly "2.0"'
    if not isinstance(message.get("method"), str):
        return request_id, 'member "method" must be a string'
    if "params" in message and not isinstance(message["params"], list | dict):
        return request_id, 'member "params" must be an array or an object'
    return request_id, None


def is_notification(message: object) -> bool:
    """A well-formed request without an id: the server runs it and never replies."""
    _, problem = check_request_shape(message)
    return problem is None and "id" not in message  # type: ignore[operator]


def expects_reply(payload: object) -> bool:
    """Whether the server will answer this decoded payload (spec section 6 for batches)."""
    if isinstance(payload, list):
        if not payload or len(payload) > BATCH_SIZE_MAX:
            return True
        return not all(is_notification(element) for element in payload)
    return not is_notification(payload)


JSON_TYPE_NAMES: dict[type, str] = {
    str: "string",
    int: "integer",
    bool: "boolean",
    float: "number",
    list: "array",
    dict: "object",
    type(None): "null",
}


def json_type_name(value: object) -> str:
    """The JSON name of a decoded value's type, for messages users read."""
    return JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def clip(text: str) -> str:
    """`text` cut to ECHO_CHARS_MAX characters, for echoing client input in messages."""
    if len(text) <= ECHO_CHARS_MAX:
        return text
    return text[:ECHO_CHARS_MAX] + "..."
