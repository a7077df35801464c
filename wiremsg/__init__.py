"""wiremsg: messages between a CI master and its build workers, over pluggable backends."""

from wiremsg.message import Message

__all__ = ["Message"]
