"""Fixtures for the whole suite.

``reactor`` imports the reactor lazily (a module-level import here would install the default
reactor before pytest-twisted honours ``--reactor``). ``clean_reactor`` is autouse: every test
fails if it leaves delayed calls, readers or writers behind (the check lives in
:mod:`wiremsg.testing.conformance`, shared with third-party backends). ``amqp_broker`` and
``amqp_prefix`` (from :mod:`tests.broker`) give the AMQP tests RabbitMQ, or skip/fail without it.
"""

from tests.broker import amqp_broker, amqp_prefix
from wiremsg.testing.conformance import clean_reactor, reactor

pytest_plugins = ["pytester"]

__all__ = ["amqp_broker", "amqp_prefix", "clean_reactor", "reactor"]
