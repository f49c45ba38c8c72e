# The compiled http_connection_manager; see hcm_config.pxd.

from sofamesh._core.http1_upstream cimport Http1ConnPool
from sofamesh._core.http2_upstream cimport Http2ConnPool
from sofamesh._core.headers cimport HeaderMap
from sofamesh._core.router cimport RouteTable
from sofamesh._core.stats cimport Store

# codec name -> connection factory(HcmConfig): the connection modules register themselves
# (http_proxy: "http1"), so this layer does not import them.
_codecs = {}

# codecs.http2 counters kept per listener (Envoy's http2.* codec stats)
H2_COUNTERS = (
    "rx_reset", "tx_reset", "header_overflow", "rx_messaging_error",
    "inbound_empty_frames_flood", "inbound_priority_frames_flood",
    "inbound_window_update_frames_flood", "outbound_flood", "outbound_control_flood",
    "too_many_premature_resets", "goaway_sent", "stream_refused_errors", "trailers",
    "header_list_size_too_large",
)


def register_codec(str name, factory):
    _codecs[name] = factory


cdef class HcmConfig:
    def __init__(self, loop, Store store, str stat_prefix, RouteTable routes, dict clusters,
                 filters=(), *, bint use_remote_address=False, bint generate_request_id=True,
                 bint accept_http_10=False, int max_head_bytes=60 * 1024,
                 int max_headers=100, int buffer_limit=1024 * 1024, upgrades=(),
                 bytes server_name=b"envoy", access_log=None, str listener_stat_name="",
                 double idle_timeout=3600.0, int server_mode=0, bint rid_in_response=False,
                 via=b"", bint skip_xff_append=False, bytes local_ip=b"127.0.0.1",
                 bint preserve_external_request_id=False, bint normalize_path=False,
                 bint merge_slashes=False, bint strip_any_host_port=False,
                 double request_timeout=0.0, double stream_idle_timeout=0.0,
                 tuple reply_map=None, bint enable_trailers=False, int codec_type=0,
                 dict h2_options=None):
        self.loop = loop
        self.stat_prefix = stat_prefix
        self.routes = routes
        self.clusters = clusters
        self.filters = tuple(filters)
        self.any_encode = any(f.wants_encode for f in self.filters)
        self.any_data = any(f.wants_data for f in self.filters)
        self.use_remote_address = use_remote_address
        self.generate_request_id = generate_request_id
        self.accept_http_10 = accept_http_10
        self.max_head_bytes = max_head_bytes
        self.max_headers = max_headers
        self.buffer_limit = buffer_limit
        self.upgrades = frozenset(u.lower() for u in upgrades)
        self.server_name = server_name
        self.access_log = access_log
        self.tracer = None
        self.trace_ppm = -1
        self.idle_timeout = idle_timeout
        self.request_timeout = request_timeout
        self.stream_idle_timeout = stream_idle_timeout
        self.drain_timeout = 5.0
        self.reply_map = reply_map
        self.server_mode = server_mode
        self.rid_in_response = rid_in_response
        self.via = via or None
        self.skip_xff_append = skip_xff_append
        self.local_ip = local_ip
        self.preserve_external_request_id = preserve_external_request_id
        self.normalize_path = normalize_path
        self.merge_slashes = merge_slashes
        self.strip_any_host_port = strip_any_host_port
        self.draining = False
        self.hand_over = None
        self.overload_reject = 0.0
        self.overload_no_keepalive = 0.0
        self.request_headers_timeout = 0.0
        self.enable_trailers = enable_trailers
        self.pool = Http1ConnPool(loop)
        self.pool2 = Http2ConnPool(loop)
        self.codec_type = codec_type
        self.h2_options = h2_options or {}
        self.conns = set()
        self.listener_name = listener_stat_name
        p = f"http.{stat_prefix}."
        c = (<object>store).counter
        self.rq_total = c(p + "downstream_rq_total")
        self.rq_http1_total = c(p + "downstream_rq_http1_total")
        self.rq_http2_total = c(p + "downstream_rq_http2_total")
        self.cx_http2_total = c(p + "downstream_cx_http2_total")
        self.cx_http2_active = store.gauge(p + "downstream_cx_http2_active")
        # the HTTP/2 codec's counters, under Envoy's names (rooted at http2.)
        self.h2_stats = {k: c("http2." + k) for k in H2_COUNTERS}
        # Envoy counts rapid resets as a connection manager stat, not a codec one
        self.h2_stats["too_many_premature_resets"] = c(
            p + "downstream_rq_too_many_premature_resets")
        self.rq_1xx = c(p + "downstream_rq_1xx")
        self.rq_2xx = c(p + "downstream_rq_2xx")
        self.rq_3xx = c(p + "downstream_rq_3xx")
        self.rq_4xx = c(p + "downstream_rq_4xx")
        self.rq_5xx = c(p + "downstream_rq_5xx")
        self.rq_completed = c(p + "downstream_rq_completed")
        self.rq_rx_reset = c(p + "downstream_rq_rx_reset")
        self.rq_tx_reset = c(p + "downstream_rq_tx_reset")
        self.rq_timeout = c(p + "downstream_rq_timeout")
        self.rq_ws_on_non_ws_route = c(p + "downstream_rq_ws_on_non_ws_route")
        self.rq_response_before_rq_complete = c(p + "downstream_rq_response_before_rq_complete")
        self.rq_header_overflow = c(p + "downstream_rq_header_overflow")
        self.rq_overload_close = c(p + "downstream_rq_overload_close")
        self.cx_overload_disable_keepalive = c(p + "downstream_cx_overload_disable_keepalive")
        self.rq_header_timeout = c(p + "downstream_rq_header_timeout")
        self.cx_total = c(p + "downstream_cx_total")
        self.cx_http1_total = c(p + "downstream_cx_http1_total")
        self.cx_destroy = c(p + "downstream_cx_destroy")
        self.cx_destroy_remote = c(p + "downstream_cx_destroy_remote")
        self.cx_destroy_local = c(p + "downstream_cx_destroy_local")
        self.cx_protocol_error = c(p + "downstream_cx_protocol_error")
        self.cx_rx_bytes_total = c(p + "downstream_cx_rx_bytes_total")
        self.cx_tx_bytes_total = c(p + "downstream_cx_tx_bytes_total")
        self.cx_upgrades_total = c(p + "downstream_cx_upgrades_total")
        self.cx_drain_close = c(p + "downstream_cx_drain_close")
        self.cx_idle_timeout = c(p + "downstream_cx_idle_timeout")
        self.rq_idle_timeout = c(p + "downstream_rq_idle_timeout")
        self.rq_max_duration_reached = c(p + "downstream_rq_max_duration_reached")
        self.no_route = c(p + "no_route")
        self.router_rq_total = c(p + "rq_total")
        self.no_cluster = c(p + "no_cluster")
        self.rq_direct_response = c(p + "rq_direct_response")
        self.rq_redirect = c(p + "rq_redirect")
        self.cx_active = store.gauge(p + "downstream_cx_active")
        self.cx_http1_active = store.gauge(p + "downstream_cx_http1_active")
        self.rq_active = store.gauge(p + "downstream_rq_active")
        self.cx_upgrades_active = store.gauge(p + "downstream_cx_upgrades_active")
        self.rq_time = store.histogram(p + "downstream_rq_time")
        lp = f"listener.{listener_stat_name}." if listener_stat_name else "listener.unnamed."
        self.listener_cx_total = c(lp + "downstream_cx_total")
        self.listener_cx_active = store.gauge(lp + "downstream_cx_active")
        self.listener_cx_destroy = c(lp + "downstream_cx_destroy")

    def protocol_factory(self):
        """A new downstream connection (asyncio protocol) of the registered codec (AUTO:
        HTTP/1, which hands a connection that opens with HTTP/2's preface to "http2")."""
        return _codecs["http2" if self.codec_type == 2 else "http1"](self)

    def codec(self, str name):
        return _codecs[name]


cdef bytes _XFCC = b"x-forwarded-client-cert"
# HttpConnectionManager.ForwardClientCertDetails
cdef enum:
    XFCC_SANITIZE = 0
    XFCC_FORWARD_ONLY = 1
    XFCC_APPEND_FORWARD = 2
    XFCC_SANITIZE_SET = 3
    XFCC_ALWAYS_FORWARD_ONLY = 4


cdef int mutate_xfcc(HcmConfig cfg, HeaderMap head, object transport) except -1:
    """SANITIZE (Envoy's default) removes a client's header; ALWAYS_FORWARD_ONLY keeps it;
    without mutual TLS the others remove it; FORWARD_ONLY keeps it; APPEND_FORWARD appends
    this hop's details (cfg.xfcc_details, proxy/xfcc.py), SANITIZE_SET replaces it. A header
    the client sent more than once leaves as one, its values joined by "," (Envoy keeps
    x-forwarded-client-cert as one inline header)."""
    cdef object mine = None
    cdef bytes old
    cdef int i
    if cfg.xfcc == XFCC_SANITIZE:
        head.remove(_XFCC)
        return 0
    if cfg.xfcc != XFCC_ALWAYS_FORWARD_ONLY:
        mine = cfg.xfcc_details(transport)
        if mine is None:            # not mutual TLS
            head.remove(_XFCC)
            return 0
    if cfg.xfcc == XFCC_FORWARD_ONLY or cfg.xfcc == XFCC_ALWAYS_FORWARD_ONLY:
        i = head.find_from(b"x-forwarded-client-cert", 23, 0)
        if i >= 0 and head.find_from(b"x-forwarded-client-cert", 23, i + 1) >= 0:
            old = head.get_all(_XFCC)
            head.remove(_XFCC)
            head.add(_XFCC, old)
        return 0
    v = (<str>mine).encode("utf-8", "surrogateescape")
    if cfg.xfcc == XFCC_APPEND_FORWARD:
        old = head.get_all(_XFCC)
        if old:
            v = old + b"," + v
    head.remove(_XFCC)
    head.add(_XFCC, v)
    return 0
