"""Command line: ``resproxy -c FILE [-t] [--log-level LEVEL]`` (also ``python -m proxy``)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys

import uvloop

from proxy import __version__
from proxy.config import ConfigError, load
from proxy.server import serve

log = logging.getLogger("proxy")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="resproxy", description="A twemproxy-compatible Redis proxy (asyncio + uvloop)."
    )
    p.add_argument("-c", "--conf-file", default="config/local.yml",
                   help="config file: native YAML or a twemproxy nutcracker.yml")
    p.add_argument("-t", "--test-conf", action="store_true",
                   help="validate the config and exit (0: valid)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error", "critical"])
    p.add_argument("-V", "--version", action="version", version=f"resproxy {__version__}")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load(args.conf_file)
    except ConfigError as exc:
        print(f"resproxy: configuration file '{args.conf_file}' syntax is invalid: {exc}",
              file=sys.stderr)
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
