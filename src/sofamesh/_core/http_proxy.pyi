import asyncio

from sofamesh._core.hcm_config import HcmConfig as HcmConfig
from sofamesh._core.http_stream import HttpFilter as HttpFilter
from sofamesh._core.http_stream import HttpStream as HttpStream

FILTER_CONTINUE_: int
HOLD_LIMIT_: int
FILTER_STOP_: int

class DownstreamConn(HttpStream, asyncio.Protocol): ...
