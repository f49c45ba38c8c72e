# gRPC rules of the router, read from a response's or request's headers.

from sofamesh._core.headers cimport HeaderMap
from sofamesh._core.router cimport Route

# the retry_on bit of a trailers-only gRPC response's grpc-status, or 0
cdef int grpc_retry_bit(HeaderMap rh) except -1
# the HTTP status outlier detection counts for a gRPC response head
cdef int grpc_outcome(HeaderMap rh, int status) except -1
# a gRPC request's deadline under max_stream_duration.grpc_timeout_header_max (s; 0: none)
cdef double grpc_timeout(HeaderMap h, Route route)
# the router's timeout of a gRPC request on a route with max_grpc_timeout (s; 0: none)
cdef double grpc_route_timeout(HeaderMap h, Route route)
# x-envoy-expected-rq-timeout-ms and grpc-timeout for a try under max_grpc_timeout
cdef int set_grpc_timeout_headers(HeaderMap h, double timeout, double per_try) except -1
# the grpc-status of a local reply to a gRPC request with HTTP status `code` (Envoy's
# Grpc::Utility::httpToGrpcStatus; others: 2, UNKNOWN)
cdef bytes grpc_local_status(int code)
# the request's content-type names gRPC (application/grpc...)
cdef bint is_grpc_request(HeaderMap h)
# a grpc-message value: bytes outside ' '..'~' and '%' percent-encoded (gRPC's rule, as
# Envoy writes a local reply's body there)
cdef bytes grpc_message_encode(bytes msg)
