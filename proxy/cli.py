"""Command line: ``resproxy -c FILE [-t] [--log-level LEVEL]`` (also ``python -m proxy``)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
import time

import uvloop

from proxy import __version__
from proxy.config import ConfigError, ConfigUnreadable, load, with_metrics
from proxy.server import check_tls, serve

log = logging.getLogger("proxy")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="resproxy", description="A twemproxy-compatible Redis proxy (asyncio + uvloop)."
    )
    p.add_argument(
        "-c",
        "--conf-file",
        default="config/local.yml",
        help="config file: native YAML or a twemproxy nutcracker.yml",
    )
    p.add_argument("-t", "--test-conf", action="store_true", help="validate the config and exit (0: valid)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error", "critical"])
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        default=None,
        help="serve /metrics and /healthz here (overrides the config's metrics.listen;"
        " the way to get them with a nutcracker.yml)",
    )
    p.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one JSON object per line, for log shippers",
    )
    p.add_argument("-V", "--version", action="version", version=f"resproxy {__version__}")
    return p


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (RFC 3339, UTC), level, logger, msg (and exc)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _setup_logging(args.log_level, args.log_format)
    try:
        config = load(args.conf_file)
    except ConfigUnreadable as exc:
        print(f"resproxy: configuration file '{args.conf_file}' cannot be read: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # (twemproxy's words, then what and where)
        print(f"resproxy: configuration file '{args.conf_file}' syntax is invalid: {exc}", file=sys.stderr)
        return 1
    if args.metrics:
        try:
            config = with_metrics(config, args.metrics)
        except ConfigError as exc:  # (the option's fault, not the file's)
            print(f"resproxy: {exc}", file=sys.stderr)
            return 1
    try:
        check_tls(config)  # certificates and keys load (before -t says ok, or we start)
    except ConfigError as exc:
        print(f"resproxy: configuration file '{args.conf_file}' is invalid: {exc}", file=sys.stderr)
        return 1
    if args.test_conf:
        print(f"resproxy: configuration file '{args.conf_file}' syntax is ok")
        return 0
    # Requests allocate many short-lived objects that reference counting frees; the cyclic GC's
    # young-generation passes over the objects still alive (every pending request) are pure
    # overhead at 700 allocations. Run them 100x less often; what lives from start-up on is
    # frozen out of every pass.
    gc.freeze()
    gc.set_threshold(70_000, 20, 20)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(serve(config))
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
