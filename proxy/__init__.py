"""resproxy: a twemproxy-compatible Redis proxy on asyncio + uvloop."""

__version__ = "0.1.0"
