"""Dispatch of request lines, without sockets: the JSON-RPC 2.0 spec's cases and ours."""

from __future__ import annotations

import json

import pytest
from structlog.testing import capture_logs

from prsm_node.control import BATCH_SIZE_MAX, Dispatcher, ErrorCode, Param
from prsm_node.control.protocol import encode

from .helpers import Methods, assert_valid_response


async def rpc(dispatcher: Dispatcher, request: object) -> object:
    """The decoded reply to `request` (bytes are sent as they are), or None for no reply."""
    raw = request if isinstance(request, bytes) else json.dumps(request).encode()
    reply = await dispatcher.handle_payload(raw)
    if reply is None:
        return None
    decoded = json.loads(reply)
    assert reply == encode(decoded), "replies are compact one-line JSON"
    return decoded


def request(method: str, params: object = None, request_id: object = 1) -> dict[str, object]:
    message: dict[str, object] = {"jsonrpc": "2.0", "method": method, "id": request_id}
    if params is not None:
        message["params"] = params
    return message


def error_code(reply: object) -> int:
    assert_valid_response(reply)
    assert isinstance(reply, dict) and "error" in reply, reply
    return reply["error"]["code"]


async def test_call_by_name_returns_result_and_echoes_id(dispatcher: Dispatcher) -> None:
    reply = await rpc(dispatcher, request("echo", {"text": "hi"}, request_id="abc"))
    assert reply == {"jsonrpc": "2.0", "id": "abc", "result": {"text": "hi"}}


async def test_call_by_position_maps_params_in_declared_order(dispatcher: Dispatcher) -> None:
    assert (await rpc(dispatcher, request("add", [2, 3])))["result"] == 5
    assert (await rpc(dispatcher, request("add", [2])))["result"] == 2


async def test_defaults_apply_and_no_params_member_means_none(dispatcher: Dispatcher) -> None:
    reply = await rpc(dispatcher, request("settings", {"enabled": False}))
    assert reply["result"] == {"enabled": False, "tags": [], "note": None}
    assert (await rpc(dispatcher, request("node_info")))["result"]["version"] == "0.1.0"


async def test_null_accepted_only_where_default_is_none(dispatcher: Dispatcher) -> None:
    reply = await rpc(dispatcher, request("settings", {"enabled": True, "note": None}))
    assert reply["result"]["note"] is None
    reply = await rpc(dispatcher, request("settings", {"enabled": None}))
    assert error_code(reply) == ErrorCode.INVALID_PARAMS
    assert "'enabled'" in reply["error"]["message"]


async def test_float_param_accepts_integer_and_returns_float(dispatcher: Dispatcher) -> None:
    reply = await rpc(dispatcher, request("scale", {"value": 3}))
    assert reply["result"] == 6.0 and isinstance(reply["result"], float)


async def test_default_list_is_fresh_for_each_call(dispatcher: Dispatcher) -> None:
    first = await rpc(dispatcher, request("settings", {"enabled": True}))
    first["result"]["tags"].append("x")
    second = await rpc(dispatcher, request("settings", {"enabled": True}))
    assert second["result"]["tags"] == []


async def test_null_id_is_a_request_not_a_notification(dispatcher: Dispatcher) -> None:
    reply = await rpc(dispatcher, request("add", [1, 1], request_id=None))
    assert reply == {"jsonrpc": "2.0", "id": None, "result": 2}


async def test_notification_runs_handler_and_gets_no_reply(
    dispatcher: Dispatcher, methods: Methods
) -> None:
    assert (
        await rpc(dispatcher, {"jsonrpc": "2.0", "method": "record", "params": [{"a": 1}]}) is None
    )
    assert methods.recorded == [{"a": 1}]


async def test_notification_errors_are_silent(dispatcher: Dispatcher) -> None:
    for method, params in [("nope", None), ("add", ["x"]), ("fail_app", None), ("fail_bug", None)]:
        message: dict[str, object] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        assert await rpc(dispatcher, message) is None


async def test_batch_mixed_valid_invalid_and_notification(
    dispatcher: Dispatcher, methods: Methods
) -> None:
    batch = [
        request("add", [1, 2], request_id="1"),
        {"jsonrpc": "2.0", "method": "record", "params": {"value": {"n": 1}}},
        {"foo": "boo"},
        request("nope", request_id="5"),
        1,
        request("echo", {"text": "last"}, request_id=9),
    ]
    replies = await rpc(dispatcher, batch)
    assert isinstance(replies, list) and len(replies) == 5
    for reply in replies:
        assert_valid_response(reply)
    assert replies[0] == {"jsonrpc": "2.0", "id": "1", "result": 3}
    assert error_code(replies[1]) == ErrorCode.INVALID_REQUEST and replies[1]["id"] is None
    assert error_code(replies[2]) == ErrorCode.METHOD_NOT_FOUND and replies[2]["id"] == "5"
    assert error_code(replies[3]) == ErrorCode.INVALID_REQUEST
    assert replies[4]["result"] == {"text": "last"} and replies[4]["id"] == 9
    assert methods.recorded == [{"n": 1}]


async def test_batch_of_invalid_scalars_gets_one_error_each(dispatcher: Dispatcher) -> None:
    replies = await rpc(dispatcher, [1, 2, 3])
    assert [error_code(reply) for reply in replies] == [ErrorCode.INVALID_REQUEST] * 3


async def test_empty_batch_gets_a_single_invalid_request_error(dispatcher: Dispatcher) -> None:
    reply = await rpc(dispatcher, [])
    assert isinstance(reply, dict)
    assert error_code(reply) == ErrorCode.INVALID_REQUEST and reply["id"] is None


async def test_batch_of_notifications_gets_no_reply(
    dispatcher: Dispatcher, methods: Methods
) -> None:
    batch = [{"jsonrpc": "2.0", "method": "record", "params": [{"i": i}]} for i in range(3)]
    assert await rpc(dispatcher, batch) is None
    assert methods.recorded == [{"i": 0}, {"i": 1}, {"i": 2}]


async def test_batch_over_the_cap_is_refused_whole(
    dispatcher: Dispatcher, methods: Methods
) -> None:
    batch = [request("record", [{"i": i}], request_id=i) for i in range(BATCH_SIZE_MAX + 1)]
    reply = await rpc(dispatcher, batch)
    assert error_code(reply) == ErrorCode.INVALID_REQUEST
    assert "batch too large" in reply["error"]["message"]
    assert methods.recorded == []
    replies = await rpc(dispatcher, batch[:BATCH_SIZE_MAX])
    assert len(replies) == BATCH_SIZE_MAX


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b'{"jsonrpc": "2.0", "method": "foobar", "params": "bar", "baz]',
        b"\xff\xfe{}",
        b'{"jsonrpc": "2.0", "method": "add", "params": [NaN], "id": 1}',
        b"[" * 100_000,
        b"1" * 5000,
    ],
    ids=["empty", "truncated", "spec-example", "not-utf8", "nan", "deep", "huge-int"],
)
async def test_malformed_json_gets_parse_error_with_null_id(
    dispatcher: Dispatcher, raw: bytes
) -> None:
    reply = await rpc(dispatcher, raw)
    assert error_code(reply) == ErrorCode.PARSE_ERROR and reply["id"] is None
    assert reply["error"]["message"].startswith("parse error")


@pytest.mark.parametrize(
    ("message", "echoed_id", "reason"),
    [
        (1, None, "must be a JSON object"),
        ("text", None, "must be a JSON object"),
        (None, None, "must be a JSON object"),
        ({"jsonrpc": "2.0", "method": 1, "params": "bar"}, None, '"method"'),
        ({"method": "add", "id": 4}, 4, '"jsonrpc"'),
        ({"jsonrpc": "1.0", "method": "add", "id": 4}, 4, '"jsonrpc"'),
        ({"jsonrpc": 2.0, "method": "add", "id": 4}, 4, '"jsonrpc"'),
        ({"jsonrpc": "2.0", "id": "x"}, "x", '"method"'),
        ({"jsonrpc": "2.0", "method": "add", "params": 5, "id": 4}, 4, '"params"'),
        ({"jsonrpc": "2.0", "method": "add", "params": "a", "id": 4}, 4, '"params"'),
        ({"jsonrpc": "2.0", "method": "add", "id": 1.5}, None, "id must be"),
        ({"jsonrpc": "2.0", "method": "add", "id": True}, None, "id must be"),
        ({"jsonrpc": "2.0", "method": "add", "id": {"a": 1}}, None, "id must be"),
        ({"jsonrpc": "2.0", "method": "add", "id": [1]}, None, "id must be"),
    ],
)
async def test_invalid_request_shapes_get_invalid_request(
    dispatcher: Dispatcher, message: object, echoed_id: object, reason: str
) -> None:
    reply = await rpc(dispatcher, message)
    assert error_code(reply) == ErrorCode.INVALID_REQUEST
    assert reply["id"] == echoed_id
    assert reason in reply["error"]["message"]


async def test_unknown_method_gets_method_not_found_naming_it(dispatcher: Dispatcher) -> None:
    reply = await rpc(dispatcher, request("peers_teleport", request_id=7))
    assert error_code(reply) == ErrorCode.METHOD_NOT_FOUND and reply["id"] == 7
    assert "peers_teleport" in reply["error"]["message"]


async def test_echoed_method_name_is_clipped(dispatcher: Dispatcher) -> None:
    reply = await rpc(dispatcher, request("x" * 10_000))
    assert error_code(reply) == ErrorCode.METHOD_NOT_FOUND
    assert len(reply["error"]["message"]) < 200


@pytest.mark.parametrize(
    ("method", "params", "expected"),
    [
        ("echo", {"text": 5}, "param 'text' must be a string, got integer"),
        ("echo", [None], "param 'text' must be a string, got null"),
        ("echo", {}, "missing required param 'text'"),
        ("echo", None, "missing required param 'text'"),
        ("echo", {"text": "a", "colour": 1}, "unknown param 'colour'"),
        ("echo", ["a", "b"], "too many params: got 2, at most 1"),
        ("add", {"a": True}, "param 'a' must be an integer, got boolean"),
        ("add", {"a": 1.0}, "param 'a' must be an integer, got number"),
        ("scale", {"value": False}, "param 'value' must be a number, got boolean"),
        ("settings", {"enabled": 1}, "param 'enabled' must be a boolean, got integer"),
        ("settings", {"enabled": True, "tags": {}}, "param 'tags' must be an array, got object"),
        ("record", {"value": []}, "param 'value' must be an object, got array"),
    ],
)
async def test_bad_params_get_invalid_params_naming_the_param(
    dispatcher: Dispatcher, method: str, params: object, expected: str
) -> None:
    reply = await rpc(dispatcher, request(method, params, request_id=3))
    assert error_code(reply) == ErrorCode.INVALID_PARAMS and reply["id"] == 3
    assert expected in reply["error"]["message"], reply["error"]["message"]
    assert method in reply["error"]["message"]


async def test_handler_rpc_error_becomes_its_error_object(dispatcher: Dispatcher) -> None:
    reply = await rpc(dispatcher, request("fail_app", request_id=2))
    assert reply == {
        "jsonrpc": "2.0",
        "id": 2,
        "error": {
            "code": ErrorCode.NODE_ERROR,
            "message": "the node is still starting; retry",
            "data": {"retry": True},
        },
    }


async def test_handler_bug_becomes_internal_error_and_is_logged(dispatcher: Dispatcher) -> None:
    with capture_logs() as logs:
        reply = await rpc(dispatcher, request("fail_bug", request_id=2))
    assert error_code(reply) == ErrorCode.INTERNAL_ERROR and reply["id"] == 2
    assert "fail_bug" in reply["error"]["message"]
    assert "KeyError" not in reply["error"]["message"]
    failures = [entry for entry in logs if entry["event"] == "control.handler_failed"]
    assert len(failures) == 1 and failures[0]["method"] == "fail_bug"
    assert failures[0]["log_level"] == "error" and failures[0].get("exc_info")
    assert (await rpc(dispatcher, request("add", [1, 2])))["result"] == 3


async def test_unencodable_result_becomes_internal_error(dispatcher: Dispatcher) -> None:
    with capture_logs() as logs:
        reply = await rpc(dispatcher, request("bad_result"))
    assert error_code(reply) == ErrorCode.INTERNAL_ERROR
    assert [entry["event"] for entry in logs] == ["control.reply_not_encodable"]


async def test_bug_in_one_batch_element_spares_the_others(dispatcher: Dispatcher) -> None:
    with capture_logs():
        replies = await rpc(
            dispatcher, [request("fail_bug", request_id=1), request("add", [4], request_id=2)]
        )
    assert error_code(replies[0]) == ErrorCode.INTERNAL_ERROR
    assert replies[1]["result"] == 4


async def noop() -> None:
    return None


async def one(value: str) -> str:
    return value


def sync_handler() -> None:
    return None


def test_register_refuses_programmer_errors() -> None:
    dispatcher = Dispatcher()
    dispatcher.register("noop", noop)
    with pytest.raises(ValueError, match="already registered"):
        dispatcher.register("noop", noop)
    with pytest.raises(ValueError, match="reserved"):
        dispatcher.register("rpc.discover", noop)
    with pytest.raises(TypeError, match="async"):
        dispatcher.register("sync", sync_handler)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="cannot take"):
        dispatcher.register("mismatch", noop, [Param("value", str)])
    with pytest.raises(TypeError, match="cannot take"):
        dispatcher.register("missing", one, [])
    with pytest.raises(ValueError, match="duplicate"):
        dispatcher.register("twice", one, [Param("value", str), Param("value", str)])
    assert dispatcher.method_names() == ["noop"]


def test_param_refuses_bad_schema() -> None:
    with pytest.raises(ValueError, match="kind"):
        Param("value", tuple)
    with pytest.raises(ValueError, match="default"):
        Param("count", int, "three")
    with pytest.raises(ValueError, match="default"):
        Param("count", int, True)
    with pytest.raises(ValueError, match="identifier"):
        Param("not a name", str)
    assert Param("ratio", float, 1).default == 1
