# The C twins of proxy/inflight.py's PyReplySlot, PyReplyQueue and PyGather: the same interface.
from proxy.inflight import PyGather as Gather
from proxy.inflight import PyReplyQueue as ReplyQueue
from proxy.inflight import PyReplySlot as ReplySlot

__all__ = ["Gather", "ReplyQueue", "ReplySlot"]
