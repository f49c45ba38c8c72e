"""Envoy's log levels, log line format (spdlog pattern flags) and version string: shared by
the command line (proxy/cli.py) and the admin API (/logging, /server_info), so that neither
imports the other."""

from __future__ import annotations

import json
import logging
import re
import time
from typing import ClassVar

from sofamesh import __version__

DEFAULT_LOG_FORMAT = "[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v"
LOG_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "critical", "off")
PY_LEVEL = {
    "trace": 5,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "off": logging.CRITICAL + 10,
}
BUILD_SHA = "0000000000000000000000000000000000000000"


def version_string() -> str:
    """Envoy's `<sha>/<version>/<status>/<build type>/<ssl>` shape, with sofamesh's version."""
    return f"{BUILD_SHA}/{__version__}/Clean/RELEASE/OpenSSL"


class EnvoyFormatter(logging.Formatter):
    """Envoy's `--log-format` (spdlog pattern flags) applied to Python log records.

    Supported flags: %Y %m %d %H %M %S %T %e %f %F %z %t %P %l %L %n %v %_ %j %g %s %# %@
    %! %%; colour markers (%^ %$) are dropped. Default: Envoy's
    `[%Y-%m-%d %T.%e][%t][%l][%n] [%g:%#] %v`.
    """

    _LEVEL: ClassVar[dict[int, str]] = {
        5: "trace",
        10: "debug",
        20: "info",
        30: "warning",
        40: "error",
        50: "critical",
    }
    _FLAG = re.compile(r"%(.)")

    def __init__(self, pattern: str = DEFAULT_LOG_FORMAT) -> None:
        super().__init__()
        self.pattern = pattern

    def format(self, record: logging.LogRecord) -> str:
        lt = time.localtime(record.created)
        msg = record.getMessage()
        if record.exc_info:
            msg += "\n" + self.formatException(record.exc_info)
        lvl = self._LEVEL.get(record.levelno, record.levelname.lower())
        frac = record.created % 1

        def sub(m: re.Match[str]) -> str:
            f = m.group(1)
            if f == "v":
                return msg
            if f == "_":
                return msg.replace("\n", "\\n")
            if f == "j":
                return json.dumps(msg)[1:-1]
            if f == "l":
                return lvl
            if f == "L":
                return lvl[:1].upper()
            if f == "n":
                return record.name.rsplit(".", 1)[-1]
            if f == "t":
                return str(record.thread or record.process)
            if f == "P":
                return str(record.process)
            if f == "e":
                return f"{int(frac * 1e3):03d}"
            if f == "f":
                return f"{int(frac * 1e6):06d}"
            if f == "F":
                return f"{int(frac * 1e9):09d}"
            if f == "T":
                return time.strftime("%H:%M:%S", lt)
            if f in "YmdHMSz":
                return time.strftime("%" + f, lt)
            if f == "g":  # source path from the package root, as Envoy's `source/...`
                pn = record.pathname
                i = pn.rfind("/sofamesh/")
                return pn[i + 1 :] if i >= 0 else pn
            if f == "s":
                return record.filename
            if f == "#":
                return str(record.lineno)
            if f == "@":
                return f"{record.filename}:{record.lineno}"
            if f == "!":
                return record.funcName
            if f in "^$":
                return ""
            if f == "%":
                return "%"
            return m.group(0)

        return self._FLAG.sub(sub, self.pattern)
