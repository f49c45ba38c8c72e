"""The overload manager's `fixed_heap` monitor and its actions (issue 13), as Envoy 1.40.

`envoy.resource_monitors.fixed_heap` (`max_heap_size_bytes`), refreshed every
`refresh_interval` (default 1 s, as Envoy): the pressure is this process's resident memory
(RSS, /proc/self/statm) over the maximum (Envoy counts tcmalloc's heap; a Python process's
memory is its RSS).

Triggers, per action (the action's value is the largest of its triggers'):
- `threshold {value}`: 1 from `value` on, else 0;
- `scaled {scaling_threshold, saturation_threshold}`: 0 below scaling, 1 from saturation
  on, linear between.

Gauges as Envoy's: `overload.envoy.resource_monitors.fixed_heap.pressure` (percent), and per
action `overload.<action>.scale_percent` (the value in percent) and `.active` (1 when
saturated). Actions:
- `envoy.overload_actions.stop_accepting_requests`: each HTTP/1.1 and HTTP/2 request, with
  probability = the value (Envoy's `bernoulli`), gets Envoy's 503 "envoy overloaded"
  (response flag OM, `http.<prefix>.downstream_rq_overload_close`);
- `envoy.overload_actions.disable_http_keepalive`: each response, with probability = the
  value, closes its HTTP/1.1 connection, or starts its HTTP/2 connection's drain (GOAWAY)
  (`http.<prefix>.downstream_cx_overload_disable_keepalive`);
- `envoy.overload_actions.reject_incoming_connections`: each accepted connection, with
  probability = the value, is closed before any filter sees it
  (`listener.<name>.downstream_cx_overload_reject`), after the global connection limit's
  check, as Envoy's TcpListenerImpl does;
- `envoy.overload_actions.reduce_timeouts` (`ScaleTimersOverloadActionConfig`): the HCM's
  idle timeout (`HTTP_DOWNSTREAM_CONNECTION_IDLE`) and `stream_idle_timeout`
  (`HTTP_DOWNSTREAM_STREAM_IDLE`) become min + (max - min) * (1 - value), where max is the
  configured timeout and min is `min_timeout`, or `min_scale` percent of max; a timeout
  armed before the value changes keeps its length (Envoy re-scales armed timers);
- `envoy.overload_actions.shrink_heap`: a full garbage collection and malloc_trim once a
  refresh while saturated.
Other monitors, actions, timers and load shed points are refused by name.
"""

from __future__ import annotations

import os
from typing import Any

from sofamesh.proxy.errors import UnsupportedConfig
from sofamesh.proxy.overload import Refused

HEAP = "envoy.resource_monitors.fixed_heap"
_HEAP_CONFIG = "envoy.extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig"
_A = "envoy.overload_actions."
REJECT_CX = _A + "reject_incoming_connections"
REDUCE = _A + "reduce_timeouts"
# action -> the HcmConfig attribute that takes its value (None: applied here)
ACTIONS = {
    _A + "stop_accepting_requests": "overload_reject",
    _A + "disable_http_keepalive": "overload_no_keepalive",
    _A + "shrink_heap": None,
    REJECT_CX: None,
    REDUCE: None,
}
# ScaleTimersOverloadActionConfig.TimerType -> the HcmConfig timeout it scales
TIMERS = {1: "idle_timeout", 2: "stream_idle_timeout"}


class Trigger:
    __slots__ = ("saturation", "scaling")

    def __init__(self, scaling: float, saturation: float) -> None:
        self.scaling = scaling  # a threshold trigger: scaling == saturation
        self.saturation = saturation

    def value(self, pressure: float) -> float:
        if pressure >= self.saturation:
            return 1.0
        if pressure < self.scaling:
            return 0.0
        return (pressure - self.scaling) / (self.saturation - self.scaling)


def _trigger(trig: Any, path: str) -> Trigger:
    if trig.HasField("threshold"):
        return Trigger(trig.threshold.value, trig.threshold.value)
    if trig.HasField("scaled"):
        sc = trig.scaled
        if sc.scaling_threshold >= sc.saturation_threshold:
            raise UnsupportedConfig(
                f"{path}.scaled: scaling_threshold must be less than saturation_threshold"
            )
        return Trigger(sc.scaling_threshold, sc.saturation_threshold)
    raise UnsupportedConfig(f"{path}: a threshold or scaled trigger is required")


def _timer_minimums(act: Any, path: str) -> dict[str, tuple[float, float]]:
    """reduce_timeouts: HcmConfig timeout attribute -> (min seconds, min fraction of max)."""
    from envoy.config.overload.v3 import overload_pb2

    msg = overload_pb2.ScaleTimersOverloadActionConfig()
    if not act.HasField("typed_config") or not act.typed_config.Unpack(msg):
        raise UnsupportedConfig(f"{path}.typed_config: expected ScaleTimersOverloadActionConfig")
    out: dict[str, tuple[float, float]] = {}
    for k, f in enumerate(msg.timer_scale_factors):
        attr = TIMERS.get(f.timer)
        if attr is None:
            name = overload_pb2.ScaleTimersOverloadActionConfig.TimerType.Name(f.timer)
            raise UnsupportedConfig(
                f"{path}.typed_config.timer_scale_factors[{k}].timer: {name} is not "
                "implemented by sofamesh (HTTP_DOWNSTREAM_CONNECTION_IDLE and "
                "HTTP_DOWNSTREAM_STREAM_IDLE are)"
            )
        if f.HasField("min_timeout"):
            out[attr] = (f.min_timeout.seconds + f.min_timeout.nanos / 1e9, 0.0)
        else:
            out[attr] = (0.0, f.min_scale.value / 100.0)
    return out


class OverloadActions:
    """fixed_heap and its actions, for one Server (see the module doc)."""

    def __init__(self, server: Any, max_bytes: int, interval: float, actions: list) -> None:
        self.server = server
        self.max_bytes = max_bytes
        self.interval = interval
        self.actions = actions  # [(name, [Trigger], timer minimums or None)]
        st = server.stats
        self.pressure = st.gauge(f"overload.{HEAP}.pressure")
        self.pressure.used = True
        self.gauges: dict[str, tuple[Any, Any]] = {}
        for name, _, _ in actions:
            a, sp = st.gauge(f"overload.{name}.active"), st.gauge(f"overload.{name}.scale_percent")
            a.used = sp.used = True
            self.gauges[name] = (a, sp)
        self.reject_cx = 0.0  # reject_incoming_connections' value (Server.admit reads it)
        self._timeouts: dict[int, tuple[Any, dict[str, float]]] = {}  # id(cfg) -> configured
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._handle: Any = None

    @classmethod
    def from_bootstrap(cls, server: Any, bootstrap: Any) -> OverloadActions | None:
        from envoy.extensions.resource_monitors.fixed_heap.v3 import fixed_heap_pb2

        om = bootstrap.overload_manager
        max_bytes = 0
        for i, mon in enumerate(om.resource_monitors):
            if mon.name != HEAP:
                continue
            msg = fixed_heap_pb2.FixedHeapConfig()
            if not mon.typed_config.Unpack(msg):
                raise UnsupportedConfig(
                    f"overload_manager.resource_monitors[{i}].typed_config: expected {_HEAP_CONFIG}"
                )
            if msg.max_heap_size_bytes < 1:
                raise UnsupportedConfig(
                    f"overload_manager.resource_monitors[{i}].max_heap_size_bytes: at least 1"
                )
            max_bytes = msg.max_heap_size_bytes
        if len(om.loadshed_points):
            raise UnsupportedConfig(
                "overload_manager.loadshed_points are not implemented by sofamesh"
            )
        actions = []
        monitors = {m.name for m in om.resource_monitors}
        for i, act in enumerate(om.actions):
            path = f"overload_manager.actions[{i}]"
            if act.name not in ACTIONS:
                raise UnsupportedConfig(
                    f"{path}.name: {act.name!r} is not implemented by sofamesh "
                    f"(implemented: {', '.join(sorted(ACTIONS))})"
                )
            triggers = []
            for j, trig in enumerate(act.triggers):
                if trig.name not in monitors:
                    raise UnsupportedConfig(
                        f"{path}.triggers[{j}].name: unknown resource monitor {trig.name!r}"
                    )
                if trig.name != HEAP:
                    raise UnsupportedConfig(
                        f"{path}.triggers[{j}]: only triggers on {HEAP} are implemented by sofamesh"
                    )
                triggers.append(_trigger(trig, f"{path}.triggers[{j}]"))
            timers = _timer_minimums(act, path) if act.name == REDUCE else None
            actions.append((act.name, triggers, timers))
        if not max_bytes:
            return None
        interval = 1.0
        if om.HasField("refresh_interval"):
            d = om.refresh_interval
            interval = max(d.seconds + d.nanos / 1e9, 0.01)
        return cls(server, max_bytes, interval, actions)

    def start(self, loop: Any) -> None:
        self._loop = loop
        self._tick()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def rss(self) -> int:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * self._page

    def _tick(self) -> None:
        pressure = self.rss() / self.max_bytes
        self.pressure.value = int(min(pressure, 1.0) * 100)
        values: dict[str, float] = {}
        for name, triggers, _ in self.actions:
            values[name] = max([values.get(name, 0.0), *(t.value(pressure) for t in triggers)])
        hcm_values = {attr: 0.0 for attr in ACTIONS.values() if attr}
        for name, value in values.items():
            a, sp = self.gauges[name]
            a.value, sp.value = int(value >= 1.0), int(value * 100)
            attr = ACTIONS[name]
            if attr:
                hcm_values[attr] = value
            if name.endswith("shrink_heap") and value >= 1.0:
                _shrink()
        self.reject_cx = values.get(REJECT_CX, 0.0)
        cfgs = hcm_configs(self.server)
        for cfg in cfgs:
            for attr, value in hcm_values.items():
                setattr(cfg, attr, value)
        for _, _, timers in self.actions:
            if timers is not None:
                self._scale_timeouts(cfgs, timers, values[REDUCE])
        self._handle = self._loop.call_later(self.interval, self._tick)

    def _scale_timeouts(self, cfgs: list, timers: dict, value: float) -> None:
        seen = set()
        for cfg in cfgs:
            seen.add(id(cfg))
            held = self._timeouts.get(id(cfg))
            if held is None or held[0] is not cfg:  # first seen: its configured timeouts
                held = (cfg, {attr: getattr(cfg, attr) for attr in timers})
                self._timeouts[id(cfg)] = held
            for attr, (min_s, min_frac) in timers.items():
                top = held[1][attr]
                if top <= 0:
                    continue  # disabled: nothing to scale
                low = min(min_s if min_frac == 0 else top * min_frac, top)
                setattr(cfg, attr, low + (top - low) * (1.0 - value))
        for gone in set(self._timeouts) - seen:  # listeners removed (LDS)
            del self._timeouts[gone]

    def rejects_connections(self) -> bool:
        return any(name == REJECT_CX for name, _, _ in self.actions)

    def reject_gate(self, factory: Any, counter: Any) -> Any:
        """A protocol factory that, with probability = reject_incoming_connections' value,
        gives the accepted connection a protocol that closes it at once (counted)."""
        import random

        def make() -> Any:
            v = self.reject_cx
            if v > 0.0 and (v >= 1.0 or random.random() < v):
                counter.value += 1
                counter.used = True
                return Refused()
            return factory()

        return make


def hcm_configs(server: Any) -> list:
    """Every HTTP connection manager the Server's listeners (static and LDS) serve."""
    from sofamesh._core.hcm_config import HcmConfig

    out: list = []

    def visit(v: Any) -> None:
        if isinstance(v, HcmConfig):
            out.append(v)
        elif hasattr(v, "views"):
            for x in v.views():
                visit(x)
        elif hasattr(v, "parts"):
            for x in v.parts:
                visit(x)

    for li in server.listeners:
        visit(li.hcm)
    dyn = getattr(server, "dynamic", None)
    for dl in (getattr(dyn, "active_listeners", None) or {}).values():
        visit(dl.view)
    return out


def _shrink() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
