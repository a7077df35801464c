"""The AMQP backend against the real RabbitMQ: the conformance suite, plus what only a broker
has (topology, returned messages, lost connections, credentials, several masters)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.broker import broker_url
from wiremsg.backends._amqp import AMQPBackend
from wiremsg.testing.conformance import BackendConformance


class TestAMQPConformance(BackendConformance):
    exclusive_listen = False  # several masters share a prefix: that is the point

    @pytest.fixture
    def backend(self, reactor: Any, amqp_prefix: str) -> AMQPBackend:
        return AMQPBackend(reactor)

    @pytest.fixture
    def listen_address(self, amqp_prefix: str) -> str:
        return broker_url(amqp_prefix)
