"""HCM local_reply_config mappers (the 404 -> 410 case is also compared with real Envoy by the
differential case hcm-local-reply-mapper-404)."""

from __future__ import annotations

import pytest

from sofamesh.proxy.errors import UnsupportedConfig
from tests.conftest import free_port

from .conftest import bootstrap, cluster, route, vhost


def _mapper(op, value, **kw):
    return {
        "filter": {
            "status_code_filter": {
                "comparison": {"op": op, "value": {"default_value": value, "runtime_key": "k"}}
            }
        },
        **kw,
    }


async def test_mappers_rewrite_local_replies_only(upstreams, proxy):
    up = await upstreams("up")
    lrc = {
        "mappers": [
            _mapper("EQ", 404, status_code=410, body={"inline_string": "gone\n"}),
            _mapper("GE", 500, body={"inline_string": "try later"}),
        ]
    }
    bs = bootstrap(
        [vhost([route("/status", "up"), route("/dead", "dead")], domains=["a.test"])],
        [cluster("up", [up.port]), cluster("dead", [free_port()])],
        local_reply_config=lrc,
    )
    p = await proxy(bs)
    c = await p.client()
    r = await c.request("GET", "/x", host="a.test")
    assert (r.status, r.body, r.header("content-type")) == (410, b"gone\n", "text/plain")
    assert p.counter("http.ingress.downstream_rq_4xx") == 1
    r = await c.request("GET", "/dead", host="a.test")
    assert (r.status, r.body) == (503, b"try later")
    # an upstream's own 404/503 is not a local reply: untouched
    r = await c.request("GET", "/status/404", host="a.test")
    assert (r.status, r.body) == (404, b"status body")
    r = await c.request("GET", "/status/503", host="a.test")
    assert (r.status, r.body) == (503, b"status body")
    await c.close()


async def test_unsupported_mapper_options_are_refused(proxy):
    bs = bootstrap(
        [vhost([route("/", "up")])],
        [cluster("up", [free_port()])],
        local_reply_config={"mappers": [{"filter": {"not_health_check_filter": {}}}]},
    )
    with pytest.raises(UnsupportedConfig, match=r"local_reply_config\.mappers\[0\]\.filter"):
        await proxy(bs)
