# Compiled, immutable route tables: virtual hosts by :authority, routes by path and headers.
#
# Contract: built once per route configuration (sofamesh.proxy.routes compiles the proto),
# never mutated afterwards; a config change builds a new RouteTable and swaps the reference.
# `RouteTable.route(headers)` runs per request with C string compares only, on the
# protocol-neutral `headers.HeaderMap` (any codec's request headers).

from sofamesh._core.headers cimport HeaderMap

cdef enum:
    PM_PREFIX = 0
    PM_PATH = 1
    PM_REGEX = 2
    PM_SEP_PREFIX = 3       # path_separated_prefix
    PM_CONNECT = 4          # connect_matcher: CONNECT requests only, whatever the path

cdef enum:
    SM_EXACT = 0
    SM_PREFIX = 1
    SM_SUFFIX = 2
    SM_CONTAINS = 3
    SM_REGEX = 4
    SM_PRESENT = 5
    SM_RANGE = 6

cdef enum:
    RA_CLUSTER = 0
    RA_WEIGHTED = 1
    RA_DIRECT = 2
    RA_REDIRECT = 3
    RA_PLUGIN = 4           # a cluster specifier plugin names the cluster per request

# retry_on bits
cdef enum:
    RETRY_5XX = 1
    RETRY_GATEWAY = 2
    RETRY_CONNECT_FAILURE = 4
    RETRY_RESET = 8
    RETRY_RETRIABLE_4XX = 16
    RETRY_REFUSED_STREAM = 32
    RETRY_STATUS_CODES = 64
    # gRPC: the grpc-status of a trailers-only response (Envoy's router reads it there)
    RETRY_GRPC_CANCELLED = 128
    RETRY_GRPC_DEADLINE_EXCEEDED = 256
    RETRY_GRPC_INTERNAL = 512
    RETRY_GRPC_RESOURCE_EXHAUSTED = 1024
    RETRY_GRPC_UNAVAILABLE = 2048
    RETRY_GRPC = 128 | 256 | 512 | 1024 | 2048

cdef unsigned long long rng_next() noexcept   # xorshift64*, seeded from os.urandom


cdef class StringMatcher:
    cdef int kind                   # SM_*
    cdef bytes value                # lower-cased when ignore_case
    cdef bint ignore_case
    cdef object regex               # re.Pattern[bytes] | None
    cdef long long lo, hi           # SM_RANGE: [lo, hi)
    cdef bint matches(self, bytes v)


cdef class HeaderMatcher:
    cdef bytes name                 # lower-case header name
    cdef StringMatcher sm           # None: present_match
    cdef bint present               # present_match value
    cdef bint invert
    cdef bint matches(self, HeaderMap h)


cdef class QueryMatcher:
    cdef bytes name
    cdef StringMatcher sm           # None: present_match
    cdef bint matches(self, dict query)


cdef class Route:
    cdef readonly object name       # str
    cdef int pm                     # PM_*
    cdef bytes pvalue               # lower-cased when not case_sensitive
    cdef bint case_sensitive
    cdef object regex               # re.Pattern[bytes] | None
    cdef tuple headers              # tuple[HeaderMatcher, ...]
    cdef tuple queries              # tuple[QueryMatcher, ...]
    cdef readonly int action        # RA_*
    cdef readonly object cluster    # str
    cdef tuple wc_names             # weighted clusters: names
    cdef tuple wc_cum               # cumulative weights
    cdef unsigned long long wc_total
    cdef readonly bytes prefix_rewrite    # None: no rewrite
    cdef readonly bytes host_rewrite      # None: no rewrite
    cdef readonly bint auto_host          # Host becomes the upstream host's DNS name
    cdef readonly bytes host_rewrite_hdr  # host_rewrite_header: lower-case name, or None
    cdef readonly object rx_rewrite       # re.Pattern[bytes] | None: regex_rewrite pattern
    cdef readonly bytes rx_subst          # its substitution (\\1 group references)
    cdef readonly double timeout          # seconds; 0: none
    cdef readonly tuple timeout_hdr       # (b"x-envoy-expected-rq-timeout-ms", b"N") or ()
    cdef readonly int retry_on            # RETRY_* bits
    cdef readonly int num_retries
    cdef readonly double per_try_timeout  # seconds; 0: none
    cdef readonly double retry_base       # retry_back_off.base_interval (s), Envoy: 25 ms
    cdef readonly double retry_max        # retry_back_off.max_interval (s), Envoy: 10x base
    cdef readonly frozenset retry_statuses  # frozenset[int]
    cdef readonly int status              # direct response / redirect status
    cdef readonly bytes body              # direct response body
    cdef readonly bytes location_scheme   # redirect parts; None keeps the request's
    cdef readonly bytes location_host
    cdef readonly bytes location_port
    cdef readonly bytes location_path
    cdef readonly bytes location_prefix
    cdef readonly bint strip_query
    # header mutations (route + virtual host + route config), names lower-case
    cdef readonly tuple req_add           # (name, value, name, value, ...): HeaderMap.add_flat
    cdef readonly frozenset req_remove    # frozenset[bytes] lower-case names
    cdef readonly tuple req_add_if_absent  # tuple[(bytes name, bytes value)]
    cdef readonly tuple resp_add          # (name, value, ...)
    cdef readonly tuple req_dyn           # tuple[(bytes name, parts)]: values with %OPERATORS%
    cdef readonly tuple resp_dyn
    cdef readonly frozenset resp_remove
    cdef readonly dict filter_config      # per-filter config: {filter name: message}
    cdef readonly frozenset upgrades      # frozenset[bytes], enabled upgrade types ('websocket')
    # upgrade_configs CONNECT with connect_config: a CONNECT request is terminated here (a
    # raw TCP connection to the cluster, 200, then bytes both ways: tcp_upstream)
    cdef readonly bint connect_term
    cdef readonly object vhost_name
    cdef readonly tuple hash_headers      # hash_policy: ((bytes lower name, bint terminal), ...)
    cdef readonly tuple mirrors           # request_mirror_policies: ((cluster, ppm, no_suffix),)
    # max_stream_duration.grpc_timeout_header_max (s): a gRPC request's grpc-timeout is its
    # timeout, capped by this unless 0; -1: not set (the route timeout applies)
    cdef readonly double grpc_timeout_max
    cdef readonly double grpc_timeout_offset  # grpc_timeout_header_offset (s)
    # RouteAction.max_grpc_timeout (s): a gRPC request's grpc-timeout (less grpc_offset when
    # that leaves more than 0) is the router's timeout, capped by this unless 0; -1: not set
    cdef readonly double max_grpc_timeout
    cdef readonly double grpc_offset      # RouteAction.grpc_timeout_offset (s)
    cdef readonly bint attempt_count      # VirtualHost.include_request_attempt_count
    cdef readonly bint attempt_count_resp  # VirtualHost.include_attempt_count_in_response
    # retry_host_predicate previous_hosts: how many times a retry's host is re-chosen while
    # it is one already tried (host_selection_retry_max_attempts); -1: no predicate
    cdef readonly int prev_hosts
    # RouteAction.cluster_not_found_response_code: the status when the cluster is unknown
    cdef readonly int cluster_not_found
    cdef readonly str decorator           # decorator.operation: the span's name, or None
    # RA_PLUGIN: proxy.lua_cluster.LuaClusterSpecifier (its cluster(HeaderMap) -> str)
    cdef readonly object plugin
    cdef bint path_matches(self, const char* p, int n, int qpos)
    cdef bint matches(self, HeaderMap h)
    cpdef str pick_cluster(self)


cdef class VirtualHost:
    cdef readonly object name       # str
    cdef tuple routes               # tuple[Route, ...]
    cdef Route match(self, HeaderMap h)


cdef class RouteTable:
    cdef dict exact                 # bytes -> VirtualHost
    cdef tuple suffixes             # tuple[(bytes, VirtualHost)], longest first
    cdef tuple prefixes             # tuple[(bytes, VirtualHost)], longest first
    cdef VirtualHost default        # "*" or None
    cdef bint strip_port
    cdef bint only_default
    cdef VirtualHost select(self, bytes host)
    cdef Route route(self, HeaderMap h)
