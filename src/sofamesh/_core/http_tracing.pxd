# Trace span contexts made on the hot path, without Python (proxy/tracing.py reports the
# sampled ones): a request's B3 context continued or started, new 64-bit span ids.

from sofamesh._core.hcm_config cimport HcmConfig
from sofamesh._core.headers cimport HeaderMap
from sofamesh._core.http_stream cimport TraceCtx

cdef bytes new_span_id()
cdef TraceCtx start_trace(HeaderMap h, HcmConfig cfg)
