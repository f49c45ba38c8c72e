"""SOFARegistry wire code without sockets: SOFA's draft Hessian (sofa_hessian), the session
server messages in Bolt frames (sofa_wire), and the adapter's mapping of pushed data.

Golden vectors: frames the real sofa-registry-node 0.0.1 sent (sofa_registry_node_frames.json,
provenance inside). python-hessian is not used as an oracle here: it reads final-spec
Hessian 2, whose 'O', 'V', 'M' and 0x4a/0x4b codes mean other things than in SOFA's draft;
the real client decoding our bytes is checked in tests/integration/pilot/test_sofaregistry.py.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sofamesh._core.codecs.bolt import BoltDecoder, BoltFrame
from sofamesh.pilot.registries import build
from sofamesh.pilot.registries.sofa_hessian import (
    HessianError,
    JavaLong,
    JavaObject,
    decode,
    encode,
)
from sofamesh.pilot.registries.sofa_wire import (
    PublisherRegister,
    ReceivedData,
    RegisterResponse,
    Result,
    SubscriberRegister,
    SyncConfigResponse,
    WireError,
    data_info_id,
    decode_body,
    encode_request,
    encode_response,
    split_data_info_id,
)
from sofamesh.pilot.registries.sofaregistry import SofaRegistry

FRAMES = json.loads((Path(__file__).parent / "sofa_registry_node_frames.json").read_text())[
    "frames"
]


def frame(name: str) -> BoltFrame:
    frames = BoltDecoder().feed(bytes.fromhex(FRAMES[name]))
    assert len(frames) == 1 and isinstance(frames[0], BoltFrame)
    return frames[0]


# ---------------------------------------------------------------- hessian draft


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -16,
        47,
        48,
        -2048,
        2047,
        -262144,
        262143,
        2**31 - 1,
        -(2**31),
        "",
        "a" * 31,
        "b" * 32,
        "c" * 0x8000,
        "d" * 0x8001 + "end",
        "zoné 区域 \U0001f600",
        "\U0001f600" * 0x4001,  # a surrogate pair straddles the 32k chunk boundary
        b"",
        b"\x00" * 15,
        b"\xff" * 16,
        bytes(range(256)) * 300,
        1.5,
        -0.0,
        [1, "two", None],
        list(range(300)),
        {"k": "v", "n": [1, 2]},
        {},
        JavaObject("a.B", {"x": 1, "y": "z", "inner": JavaObject("a.C", {"q": None})}),
        [JavaObject("a.B", {"x": i}) for i in range(3)],  # class defined once, then 'o' refs
    ],
)
def test_round_trip(value):
    assert decode(encode(value)) == value


@pytest.mark.parametrize(
    "v", [-8, 15, 16, -2048, 2047, -262144, 262143, 2**31 - 1, -(2**31), 2**40, -(2**63)]
)
def test_long_round_trip(v):
    assert decode(encode(JavaLong(v))) == v


def test_encoding_matches_the_draft():
    # each byte string as hessian.js-1's EncoderV2 writes it (see the grammar in sofa_hessian)
    assert encode(JavaLong(1)) == b"\xe1"
    assert encode(JavaLong(1796373514098)) == b"L" + (1796373514098).to_bytes(8, "big")
    assert encode(53) == b"\xc8\x35"
    assert encode("ab") == b"\x02ab"
    assert encode("x" * 45) == b"S\x00\x2d" + b"x" * 45
    assert encode(JavaObject("a.B", {"f": 1})) == b"O\x93a.B\x91\x01fo\x90\x91"
    assert encode([1]) == b"Vn\x01\x91z"
    assert encode({"a": 1}) == b"M\x01a\x91z"


def test_references_and_typed_lists():
    # 'V' with a type, then 'v' reusing it by type ref; 0x4a refers back to the first list
    data = b"V" + b"t\x00\x0ejava.util.List" + b"n\x01\x91z"
    assert decode(b"Vn\x02" + data + b"v\x90\x92\x92\x93" + b"z") == [[1], [2, 3]]
    assert decode(b"Vn\x02Vn\x01\x91zJ\x01z") == [[1], [1]]


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"S\x00\x05ab",
        b"Vn\x03\x91",
        b"o\x90",
        b"J\x05",
        b"\x05\xff\xfe\xfd\xfc\xfb",
        b"O\x93a.B\x91\x01fo\x91\x91",
        b"M" * 100,
        b"V" * 200,
        b"\x41",
    ],
)
def test_bad_input_is_a_hessian_error(bad):
    with pytest.raises(HessianError):
        decode(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_hessian_error(data):
    try:
        decode(data)
    except HessianError:
        pass


def test_every_truncation_of_a_real_frame_is_a_clean_error():
    f = frame("publisher_register")
    content = bytes(f.content)
    for cut in range(len(content)):
        with pytest.raises(WireError):
            decode_body(f.class_name, content[:cut])


def test_random_corruption_of_a_real_frame_never_escapes():
    content = bytes(frame("publisher_register").content)
    rnd = random.Random(12)
    for _ in range(2000):
        b = bytearray(content)
        for _ in range(rnd.randint(1, 4)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        try:
            decode_body(PublisherRegister.CLASS, bytes(b))
        except WireError:
            pass


# ---------------------------------------------------------------- messages, real client bytes


def test_real_publisher_register():
    f = frame("publisher_register")
    assert (f.proto, f.type, f.cmdcode, f.codec, f.timeout) == (1, 1, 1, 1, 3000)
    assert f.headers() == []
    msg = decode_body(f.class_name, f.content)
    assert isinstance(msg, PublisherRegister)
    assert (msg.data_id, msg.group, msg.instance_id, msg.zone) == (
        "com.example.Echo:1.0",
        "SOFA",
        "DEFAULT_INSTANCE_ID",
        "ZONE_A",
    )
    assert (msg.event_type, msg.version, msg.app_name) == ("REGISTER", 1, "sofamesh-test")
    assert msg.timestamp > 1_600_000_000_000
    assert len(msg.regist_id) == 36
    assert msg.data_list[0].startswith("bolt://127.0.0.1:12200?")
    assert msg.data_list[1] == "127.0.0.1:12201"
    assert msg.key == "com.example.Echo:1.0#@#DEFAULT_INSTANCE_ID#@#SOFA"
    # re-encoded by us, it reads back the same
    again = BoltDecoder().feed(encode_request(f.request_id, msg))[0]
    assert again.class_name == f.class_name
    assert decode_body(again.class_name, again.content) == msg


def test_real_unregisters_and_subscriber():
    pub = decode_body(PublisherRegister.CLASS, frame("publisher_unregister").content)
    assert isinstance(pub, PublisherRegister)
    assert pub.unregister and pub.version == 2 and pub.data_list == []
    sub = decode_body(SubscriberRegister.CLASS, frame("subscriber_register").content)
    assert isinstance(sub, SubscriberRegister)
    assert sub.scope == "zone" and not sub.unregister and sub.data_id == "com.example.Echo:1.0"
    unsub = decode_body(SubscriberRegister.CLASS, frame("subscriber_unregister").content)
    assert isinstance(unsub, SubscriberRegister)
    assert unsub.unregister and unsub.regist_id == sub.regist_id


def test_real_push_reply():
    f = frame("push_result")
    assert (f.type, f.cmdcode, f.status) == (0, 2, 0)
    assert decode_body(f.class_name, f.content) == Result(True, None)


@pytest.mark.parametrize(
    "msg",
    [
        ReceivedData(
            "com.example.Echo:1.0",
            "SOFA",
            "DEFAULT_INSTANCE_ID",
            ["r1", "r2"],
            {"ZONE_A": ["127.0.0.1:1?a=b", "x" * 100], "ZONE_B": []},
            JavaLong(2**40).value,
        ),
        RegisterResponse(True, "r1", 7, False, "ok"),
        SyncConfigResponse(["DefaultDataCenter"], 30000),
        SubscriberRegister(data_id="d", regist_id="r", attributes={"k": "v"}),
    ],
)
def test_message_round_trip(msg):
    for raw in (encode_request(9, msg), encode_response(9, msg)):
        (f,) = BoltDecoder().feed(raw)
        assert f.request_id == 9
        assert decode_body(f.class_name, f.content) == msg


def test_wrong_shapes_are_wire_errors():
    with pytest.raises(WireError, match="unknown class"):
        decode_body("com.example.Other", encode(1))
    with pytest.raises(WireError, match="not an object"):
        decode_body(ReceivedData.CLASS, encode([1]))
    with pytest.raises(WireError, match="dataId"):
        decode_body(PublisherRegister.CLASS, encode(JavaObject(PublisherRegister.CLASS, {})))
    bad_box = JavaObject(
        ReceivedData.CLASS, {"dataId": "d", "data": {"Z": [JavaObject("x.DataBox", {"data": 5})]}}
    )
    with pytest.raises(WireError, match="DataBox"):
        decode_body(ReceivedData.CLASS, encode(bad_box))
    with pytest.raises(WireError, match="eventType"):
        decode_body(
            SubscriberRegister.CLASS,
            encode(
                JavaObject(
                    SubscriberRegister.CLASS, {"dataId": "d", "registId": "r", "eventType": "X"}
                )
            ),
        )


def test_data_info_id():
    assert data_info_id("d", None, None) == "d#@#DEFAULT_INSTANCE_ID#@#DEFAULT_GROUP"
    assert split_data_info_id("d#@#i#@#g") == ("d", "i", "g")
    with pytest.raises(WireError):
        split_data_info_id("d#@#i")


# ---------------------------------------------------------------- the adapter's mapping


def adapter(**kw) -> SofaRegistry:
    reg = build(
        {"type": "sofaregistry", "address": "127.0.0.1:9600", "data_ids": ["svc:1.0"], **kw}
    )
    assert isinstance(reg, SofaRegistry)
    return reg


def push(reg: SofaRegistry, data: dict[str, list[str]], version: int, **kw) -> Result:
    msg = ReceivedData(
        kw.pop("data_id", "svc:1.0"),
        kw.pop("group", "DEFAULT_GROUP"),
        "DEFAULT_INSTANCE_ID",
        [reg._regist_ids.get("svc:1.0", "")],
        data,
        version,
        segment="DC1",
    )
    res = reg._on_request(None, msg)  # type: ignore[arg-type]
    assert isinstance(res, Result)
    reg._rebuild()
    return res


def test_push_maps_to_services_and_bad_data_is_counted():
    async def run():
        reg = adapter()
        res = push(
            reg,
            {
                "ZONE_A": [
                    "bolt://10.0.0.1:12200?weight=50&appName=echo&startTime=99&protocol=bolt",
                    "10.0.0.2:12200",
                    "not a url",
                    "10.0.0.3:notaport",
                    "10.0.0.4:12200?weight=x",
                ],
                "ZONE_B": ["10.0.0.5:12200?weight=0", "10.0.0.6:12300"],
            },
            version=3,
        )
        assert res.success
        snap = reg.snapshot()
        svc = snap.services["svc-1.0"]
        assert svc.labels == (("sofa.data_id", "svc:1.0"),)
        assert svc.ports[0].number == 12200 and svc.ports[0].protocol == "bolt"
        insts = {i.address: i for i in snap.instances["svc-1.0"]}
        assert sorted(insts) == ["10.0.0.1", "10.0.0.2", "10.0.0.5", "10.0.0.6"]
        a = insts["10.0.0.1"]
        assert a.weight == 50 and a.healthy and a.registry == "sofaregistry"
        assert a.label_dict == {
            "weight": "50",
            "appName": "echo",
            "protocol": "bolt",
            "zone": "ZONE_A",
        }
        assert (a.locality.region, a.locality.zone) == ("DC1", "ZONE_A")
        assert not insts["10.0.0.5"].healthy
        assert reg.stats["parse_errors"] == 3
        # the same bad data pushed again is not counted again
        push(reg, {"ZONE_A": ["not a url", "10.0.0.2:12200"]}, version=4)
        assert reg.stats["parse_errors"] == 3
        assert [i.address for i in reg.snapshot().instances["svc-1.0"]] == ["10.0.0.2"]
        # an older version is ignored; an empty push removes the service
        push(reg, {"ZONE_A": ["10.0.0.9:1"]}, version=2)
        assert reg.stats["stale_pushes"] == 1
        assert [i.address for i in reg.snapshot().instances["svc-1.0"]] == ["10.0.0.2"]
        push(reg, {}, version=5)
        assert "svc-1.0" not in reg.snapshot().services
        # a push for something not subscribed is refused and counted
        res = push(reg, {"Z": ["10.0.0.1:1"]}, version=1, data_id="other")
        assert not res.success and reg.stats["unexpected_pushes"] == 1

    asyncio.run(run())


@pytest.mark.parametrize(
    "cfg, msg",
    [
        ({}, "address: required"),
        ({"address": "nohost"}, "address: expected host:port"),
        ({"address": "h:1"}, "data_ids: required"),
        ({"address": "h:1", "discover": True}, "http_address: required"),
        ({"address": "h:1", "data_ids": ["a#@#b"]}, "data_ids: a dataId"),
        ({"address": "h:1", "data_ids": ["a"], "hots": 1}, "hots: unknown field"),
        ({"address": "h:1", "export": True, "export_address": "x"}, "export_address: expected"),
        ({"address": "h:1", "export": "yes"}, "export: expected true or false"),
    ],
)
def test_config_errors(cfg, msg):
    from sofamesh.pilot.registries import RegistryConfigError

    with pytest.raises(RegistryConfigError, match=msg):
        build({"type": "sofaregistry", **cfg})
