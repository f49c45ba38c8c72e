"""Registry adapters without sockets: Dubbo URLs, config checking, and the mapping of
Consul health entries and Kubernetes objects to the pilot's model."""

from __future__ import annotations

from urllib.parse import unquote_plus

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sofamesh.pilot import registries
from sofamesh.pilot.registries import RegistryConfigError, dubbo_url
from sofamesh.pilot.registries.consul import ConsulRegistry
from sofamesh.pilot.registries.kubernetes import KubernetesRegistry, port_protocol
from sofamesh.pilot.registries.zookeeper import ZooKeeperRegistry

# ---- Dubbo URLs ------------------------------------------------------------------------

# A node name as Dubbo 2.7.x writes it under /dubbo/<interface>/providers (URL.encode)
DUBBO_NODE = (
    "dubbo%3A%2F%2F192.168.1.20%3A20880%2Forg.apache.dubbo.demo.DemoService%3Fanyhost%3Dtrue"
    "%26application%3Ddemo-provider%26deprecated%3Dfalse%26dubbo%3D2.0.2%26dynamic%3Dtrue"
    "%26generic%3Dfalse%26group%3Dgray%26interface%3Dorg.apache.dubbo.demo.DemoService"
    "%26methods%3DsayHello%2CsayHelloAsync%26pid%3D31337%26release%3D2.7.23%26side%3Dprovider"
    "%26timestamp%3D1700000000000%26version%3D1.0.0%26weight%3D200"
)


def test_parse_dubbo_provider_node():
    u = dubbo_url.parse_node_name(DUBBO_NODE)
    assert (u.protocol, u.host, u.port) == ("dubbo", "192.168.1.20", 20880)
    assert u.interface == "org.apache.dubbo.demo.DemoService"
    assert (u.version, u.group, u.weight, u.side) == ("1.0.0", "gray", 200, "provider")
    assert u.params["methods"] == "sayHello,sayHelloAsync"
    assert u.instance_id == "192.168.1.20:20880/gray:1.0.0"
    assert "timestamp" not in u.labels() and u.labels()["application"] == "demo-provider"
    assert u.enabled and not u.exported_by_mesh


def test_parse_ipv6_and_triple():
    u = dubbo_url.parse_url("tri://[fd00::5]:50051/com.example.Greeter?side=provider")
    assert (u.host, u.port, u.interface, u.weight) == ("fd00::5", 50051, "com.example.Greeter", 100)
    assert dubbo_url.PROTOCOL_MAP[u.protocol] == "grpc"


def test_parse_dubbo_python_triple_node():
    # what apache-dubbo (dubbo-python 3.0) registers for a Triple server
    u = dubbo_url.parse_node_name("tri%3A%2F%2F127.0.0.1%3A38585%3Fservice%3Dorg.example.Greeter")
    assert (u.protocol, u.host, u.port, u.interface, u.side) == (
        "tri",
        "127.0.0.1",
        38585,
        "org.example.Greeter",
        "provider",
    )


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "nonsense",
        "dubbo://host-without-port/Iface",
        "dubbo://:20880/Iface",
        "dubbo://10.0.0.1:99999/Iface",
        "dubbo://10.0.0.1:20880/",
    ],
)
def test_bad_urls_raise(bad):
    with pytest.raises(dubbo_url.DubboURLError):
        dubbo_url.parse_url(bad)


def test_bad_weight_raises():
    u = dubbo_url.parse_url("dubbo://10.0.0.1:20880/I?weight=x")
    with pytest.raises(dubbo_url.DubboURLError):
        _ = u.weight


def test_format_is_java_urlencoded_and_parses_back():
    url = dubbo_url.format_url(
        "com.example.Svc",
        "10.0.0.2",
        20881,
        params={"version": "2.0", "group": "", "methods": "a,b", dubbo_url.EXPORT_MARK: "zk"},
    )
    node = dubbo_url.encode_node_name(url)
    assert "/" not in node and ":" not in node and "," not in node  # one ZooKeeper path segment
    assert unquote_plus(node) == url
    u = dubbo_url.parse_node_name(node)
    assert (u.host, u.port, u.interface, u.version, u.side) == (
        "10.0.0.2",
        20881,
        "com.example.Svc",
        "2.0",
        "provider",
    )
    assert "group" not in u.params  # empty params are left out, as Dubbo does
    assert u.exported_by_mesh


_token = st.text(
    st.characters(min_codepoint=33, max_codepoint=0x2FF, blacklist_characters="&=#?%"),
    min_size=1,
    max_size=12,
)


@given(
    host=st.ip_addresses().map(str),
    port=st.integers(1, 65535),
    iface=st.from_regex(r"[a-z][a-z0-9]{0,8}(\.[A-Za-z][A-Za-z0-9]{0,8}){0,4}", fullmatch=True),
    params=st.dictionaries(st.from_regex(r"[a-z][a-z.]{0,10}", fullmatch=True), _token, max_size=5),
)
def test_format_parse_roundtrip(host, port, iface, params):
    params.pop("interface", None)
    url = dubbo_url.format_url(iface, host, port, params=params)
    u = dubbo_url.parse_node_name(dubbo_url.encode_node_name(url))
    assert (u.host, u.port, u.interface) == (host, port, iface)
    for k, v in params.items():
        assert u.params[k] == v


# ---- config ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg, msg",
    [
        ({"type": "zookeeper"}, "hosts: required"),
        ({"type": "zookeeper", "hosts": "h:1", "root": "dubbo"}, "root: must be an absolute path"),
        ({"type": "zookeeper", "hosts": "h:1", "export": "yes"}, "export: expected true or false"),
        ({"type": "zookeeper", "hosts": "h:1", "export_protocols": ["smoke"]}, "export_protocols"),
        ({"type": "zookeeper", "hosts": "h:1", "export_address": "nohost"}, "export_address"),
        ({"type": "zookeeper", "hosts": "h:1", "hots": 1}, "hots: unknown field"),
        (
            {"type": "zookeeper", "hosts": "h:1", "auth": "nopassword"},
            "auth: expected user:password",
        ),
        ({"type": "consul", "address": "127.0.0.1:8500"}, "address: expected http://"),
        ({"type": "consul", "wait": 0}, "wait: expected a number"),
        ({"type": "consul", "wait": 900}, "wait: Consul caps"),
        ({"type": "kubernetes"}, "api_server: required"),
        ({"type": "kubernetes", "api_server": "10.0.0.1:443"}, "api_server: expected an http"),
        ({"type": "kubernetes", "api_server": "https://k", "namespaces": "a"}, None),
        ({"type": "eureka"}, "type: must be one of zookeeper, consul, kubernetes"),
        ({"type": "sofaregistry"}, "address: required"),
    ],
)
def test_config_errors_name_the_field(cfg, msg):
    if msg is None:
        reg = registries.build(cfg)
        assert isinstance(reg, KubernetesRegistry) and reg.namespaces == ("a",)
        return
    with pytest.raises(RegistryConfigError, match=msg.replace("(", r"\(")):
        registries.build(cfg)


def test_path_prefixes_errors():
    with pytest.raises(RegistryConfigError, match=r"^registries\[2\]\.hosts: required$"):
        registries.build({"type": "zookeeper"}, path="registries[2]")


def test_build_defaults():
    zk = registries.build({"type": "zookeeper", "hosts": "127.0.0.1:2181"})
    assert isinstance(zk, ZooKeeperRegistry)
    assert (zk.name, zk.root, zk.exports) == ("zookeeper", "/dubbo", False)
    c = registries.build({"type": "consul", "name": "consul-dc2", "datacenter": "dc2"})
    assert isinstance(c, ConsulRegistry) and c.name == "consul-dc2" and "consul" in c.exclude


def test_in_cluster(monkeypatch):
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    k = registries.build({"type": "kubernetes", "in_cluster": True})
    assert k.api_server == "https://10.96.0.1:443"
    assert k.token_file.endswith("serviceaccount/token") and k.ca_file.endswith("ca.crt")


# ---- Consul mapping --------------------------------------------------------------------


def _entry(checks, **svc):
    base = {
        "ID": "orders-8080",
        "Service": "orders",
        "Tags": ["secure=false", "primary"],
        "Address": "10.0.0.9",
        "Port": 8080,
        "Meta": {"zone": "z1", "protocol": "grpc"},
        "Weights": {"Passing": 3, "Warning": 1},
    }
    base.update(svc)
    return {
        "Node": {"Node": "n1", "Address": "10.0.0.1", "Datacenter": "dc1"},
        "Service": base,
        "Checks": checks,
    }


PASS = {"CheckID": "serfHealth", "Status": "passing"}


def test_consul_entry_mapping():
    reg = ConsulRegistry()
    svc, [inst] = reg._build(
        "orders", [_entry([PASS, {"CheckID": "service:orders-8080", "Status": "passing"}])]
    )
    assert (inst.address, inst.port, inst.protocol, inst.weight) == ("10.0.0.9", 8080, "grpc", 3)
    assert inst.healthy and inst.instance_id == "orders-8080"
    assert inst.label_dict == {
        "secure": "false",
        "zone": "z1",
        "protocol": "grpc",
        "consul.tags": "primary",
    }
    assert (inst.locality.region, inst.locality.zone) == ("dc1", "z1")
    assert [(p.number, p.protocol) for p in svc.ports] == [(8080, "grpc")]


@pytest.mark.parametrize("status", ["warning", "critical", "maintenance"])
def test_consul_only_passing_is_healthy(status):
    reg = ConsulRegistry()
    _, [inst] = reg._build("orders", [_entry([PASS, {"Status": status}])])
    assert not inst.healthy


def test_consul_node_address_and_bad_entries():
    reg = ConsulRegistry()
    svc_ok = _entry([], Address="")
    out = reg._build(
        "orders", [svc_ok, {"Node": {}, "Service": {"Port": "x"}}, {"nope": 1}, _entry([], Port=0)]
    )
    assert out is not None
    _, insts = out
    assert [i.address for i in insts] == ["10.0.0.1"]  # the node's address
    assert reg.stats["bad_entries"] == 3


def test_consul_duplicate_ids_on_two_nodes():
    reg = ConsulRegistry()
    a = _entry([])
    b = _entry([], Address="10.0.0.10")
    b["Node"] = {"Node": "n2", "Address": "10.0.0.2", "Datacenter": "dc1"}
    _, insts = reg._build("orders", [a, b])
    assert sorted(i.instance_id for i in insts) == ["n2/orders-8080", "orders-8080"]


# ---- Kubernetes mapping ----------------------------------------------------------------


@pytest.mark.parametrize(
    "port, proto",
    [
        ({"name": "http", "port": 80}, "http"),
        ({"name": "http-web", "port": 80}, "http"),
        ({"name": "grpc-api", "port": 80}, "grpc"),
        ({"name": "web", "port": 80, "appProtocol": "http2"}, "http2"),
        ({"name": "web", "port": 80, "appProtocol": "kubernetes.io/h2c"}, "http2"),
        ({"name": "dubbo", "port": 20880}, "dubbo"),
        ({"name": "mysql", "port": 3306}, "tcp"),
        ({"name": "", "port": 80}, "tcp"),
        ({"name": "dns", "port": 53, "protocol": "UDP"}, None),
        ({"name": "x", "port": 1, "protocol": "SCTP"}, None),
    ],
)
def test_kube_port_protocol(port, proto):
    assert port_protocol(port) == proto


def test_kube_service_mapping_unnamed_port_ipv6_and_fqdn_slices():
    reg = KubernetesRegistry("http://unused")
    obj = {
        "metadata": {"name": "db", "namespace": "data"},
        "spec": {"ports": [{"port": 5432, "targetPort": 5432, "protocol": "TCP"}]},
    }
    slices = [
        {
            "metadata": {"name": "db-1"},
            "addressType": "IPv6",
            "ports": [{"port": 15432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["fd00::7"], "conditions": {"ready": False, "terminating": True}}
            ],
        },
        {
            "metadata": {"name": "db-2"},
            "addressType": "FQDN",
            "ports": [{"port": 5432}],
            "endpoints": [{"addresses": ["db.example.com"]}],
        },
    ]
    svc, [inst] = reg._service("data", "db", obj, slices)
    assert svc.name == "db.data.svc.cluster.local"
    assert (inst.address, inst.port, inst.service_port, inst.protocol, inst.healthy) == (
        "fd00::7",
        15432,
        5432,
        "tcp",
        False,
    )
    assert inst.instance_id == "fd00::7:15432"


def test_export_address_sidecar_points_at_the_consumers_sidecar():
    from sofamesh.pilot.model import Instance

    cfg = {"type": "zookeeper", "hosts": "h:1", "export": True}
    fixed = registries.build({**cfg, "export_address": "10.0.0.9:20880"})
    sidecar = registries.build({**cfg, "export_address": "sidecar"})
    sidecar.export_to.sidecar_port_offset = 10000  # the pilot's --tcp-port-offset
    inst = Instance("com.example.Svc", "i1", "10.62.1.2", 41234, "dubbo", service_port=20880)
    hostport = {}
    for reg in (fixed, sidecar, registries.build(cfg)):
        path, iface = reg._export_path("com.example.Svc", inst)
        u = dubbo_url.parse_node_name(path.rsplit("/", 1)[1])
        hostport[reg is fixed, reg is sidecar] = (u.host, u.port)
        assert iface == "com.example.Svc" and u.exported_by_mesh
    assert hostport == {
        (True, False): ("10.0.0.9", 20880),
        (False, True): ("127.0.0.1", 30880),
        (False, False): ("10.62.1.2", 41234),
    }
