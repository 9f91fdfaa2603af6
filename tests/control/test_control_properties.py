"""Properties of `Dispatcher.handle_payload` over arbitrary input: it never raises, and it
answers exactly when the shared rules (protocol.expects_reply) say a reply is due, with
well-formed JSON-RPC 2.0 responses."""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from prsm_node.control.protocol import BATCH_SIZE_MAX, expects_reply, is_notification

from .helpers import Methods, assert_valid_response, make_dispatcher

PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=25,
)
method_names = (
    st.sampled_from(
        [
            "echo",
            "add",
            "scale",
            "settings",
            "record",
            "node_info",
            "fail_app",
            "fail_bug",
            "bad_result",
            "nope",
            "rpc.x",
            "",
        ]
    )
    | st.text(max_size=10)
    | json_scalars
)
param_names = st.sampled_from(["text", "a", "b", "value", "factor", "enabled", "tags", "note"])
params = (
    st.lists(json_values, max_size=4)
    | st.dictionaries(param_names | st.text(max_size=5), json_values, max_size=4)
    | json_scalars
)
request_ids = st.integers() | st.text(max_size=8) | st.none() | st.floats() | st.booleans()
request_like = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "2.0", "2.0", "1.0", 2.0, None]),
        "method": method_names,
        "params": params,
        "id": request_ids,
        "extra": json_values,
    },
)
payloads = (
    json_values
    | request_like
    | st.lists(request_like | json_values, max_size=8)
    | st.lists(request_like, min_size=BATCH_SIZE_MAX, max_size=BATCH_SIZE_MAX + 2)
)


async def check_reply(payload: object, raw: bytes) -> None:
    """The reply to `raw` (the encoding of `payload`) is due exactly when expected, and valid."""
    with capture_logs():
        reply = await make_dispatcher(Methods()).handle_payload(raw)
    assert (reply is not None) == expects_reply(payload), (payload, reply)
    if reply is None:
        return
    assert b"\n" not in reply
    decoded = json.loads(reply)
    if isinstance(decoded, list):
        assert isinstance(payload, list) and decoded
        expected = sum(not is_notification(element) for element in payload)
        assert len(decoded) == expected
        for response in decoded:
            assert_valid_response(response)
    else:
        assert_valid_response(decoded)


@PROPERTY_SETTINGS
@given(raw=st.binary(max_size=300))
async def test_arbitrary_bytes_never_raise_and_get_a_valid_reply(raw: bytes) -> None:
    with capture_logs():
        reply = await make_dispatcher(Methods()).handle_payload(raw)
    try:
        payload = json.loads(raw.decode("utf-8"), parse_constant=float)
    except (UnicodeDecodeError, ValueError, RecursionError):
        assert reply is not None
        assert json.loads(reply)["error"]["code"] == -32700
        return
    if any(isinstance(value, float) and not math.isfinite(value) for value in _leaves(payload)):
        return  # NaN and Infinity are parse errors for the node; the example tests check that
    await check_reply(payload, raw)


@PROPERTY_SETTINGS
@given(payload=payloads)
async def test_arbitrary_json_never_raises_and_replies_when_due(payload: object) -> None:
    await check_reply(payload, json.dumps(payload).encode())


@PROPERTY_SETTINGS
@given(request_id=st.integers() | st.text(max_size=20), method=method_names, args=params)
async def test_a_request_with_a_valid_id_is_answered_with_that_id(
    request_id: object, method: object, args: object
) -> None:
    message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": args}
    with capture_logs():
        reply = await make_dispatcher(Methods()).handle_payload(json.dumps(message).encode())
    assert reply is not None
    decoded = json.loads(reply)
    assert_valid_response(decoded)
    assert decoded["id"] == request_id


def _leaves(value: object) -> list[object]:
    if isinstance(value, list):
        return [leaf for element in value for leaf in _leaves(element)]
    if isinstance(value, dict):
        return [leaf for element in value.values() for leaf in _leaves(element)]
    return [value]
