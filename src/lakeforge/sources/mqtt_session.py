"""One MQTT v5 connection of the MQTT source (``mqtt.py``), through paho-mqtt ≥ 2.

The connection is a *persistent session*: ``clean_start`` false and a session expiry, so the
broker keeps the subscriptions and queues QoS 1 messages for the client id while no run is
connected. Acknowledgements are manual (``manual_ack``): a message is acknowledged only when
the source says so (after its batch's commit), so a message that was not acknowledged
before a crash is delivered again, with the DUP flag and its original packet id.

The client's *Receive Maximum* bounds how many unacknowledged messages the broker sends at
a time; the source sets it to its batch size, so a whole batch can be held unacknowledged
while it is committed.

paho runs the network in its own thread: received messages and a lost connection are put
in :attr:`MqttSession.inbox`, which the source reads.
"""

from __future__ import annotations

import queue
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

from lakeforge.errors import SourceError, TransientSourceError
from lakeforge.extras import require
from lakeforge.sources.tls import CLOSED_DURING_TLS, tls_failure

NEVER_EXPIRES = 0xFFFFFFFF  # MQTT v5 session expiry interval: the session never expires


@dataclass(frozen=True)
class Received:
    """A message as received: paho's message and the time it arrived (epoch seconds)."""

    message: Any
    at: float


@dataclass(frozen=True)
class Lost:
    """The connection ended while the source was reading."""

    reason: str


class MqttSession:
    """A connected MQTT v5 client with a persistent session and manual acknowledgements."""

    def __init__(
        self,
        dataset: str,
        *,
        host: str,
        port: int,
        client_id: str,
        keepalive: int,
        timeout: float,
        session_expiry: int,
        receive_maximum: int,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        mqtt = require("paho.mqtt.client")
        from paho.mqtt.enums import CallbackAPIVersion

        self.dataset = dataset
        self.where = f"MQTT broker {host}:{port}"
        self.inbox: queue.Queue[Received | Lost] = queue.Queue()
        self.session_present = False
        self._host, self._port, self._keepalive = host, port, keepalive
        self._timeout = timeout
        self._expiry, self._receive_maximum = session_expiry, receive_maximum
        self._closing = False
        self._connack: tuple[Any, bool] | None = None
        self._connected = threading.Event()
        self._acked: dict[int, Any] = {}  # SUBSCRIBE / UNSUBSCRIBE mid → reason codes
        self._acks = threading.Condition()
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,  # a lost connection fails the run; the task retries
            manual_ack=True,
        )
        client.connect_timeout = timeout
        self._tls = tls
        if tls is not None:
            client.tls_set_context(tls)
            self.where = f"MQTT broker {host}:{port} (TLS)"
        if username is not None:
            client.username_pw_set(username, password)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribed
        client.on_unsubscribe = self._on_subscribed
        self.client = client

    # -- paho's network thread ------------------------------------------------------------

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connack = (reason, bool(flags.session_present))
        self._connected.set()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self.inbox.put(Received(message, time.time()))

    def _on_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if not self._closing:
            self.inbox.put(Lost(str(reason)))
        self._connected.set()  # wakes a wait for a CONNACK that will not come

    def _on_subscribed(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        with self._acks:
            self._acked[mid] = codes
            self._acks.notify_all()

    # -- the source's thread --------------------------------------------------------------

    def open(self) -> bool:
        """Connect (clean start off); whether the broker still had the session."""
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self._expiry
        props.ReceiveMaximum = self._receive_maximum
        try:
            self.client.connect(
                self._host, self._port, self._keepalive, clean_start=False, properties=props
            )
        except OSError as exc:
            hint = tls_failure(exc) if self._tls is not None else None
            raise TransientSourceError(
                f"{self.dataset}: {self.where} is not reachable: {exc}",
                dataset=self.dataset,
                hint=hint or "is the broker up? (host:, port:)",
            ) from None
        self.client.loop_start()
        if not self._connected.wait(self._timeout) or self._connack is None:
            raise TransientSourceError(
                f"{self.dataset}: {self.where} did not accept the connection within "
                f"{self._timeout:g}s",
                dataset=self.dataset,
                hint=CLOSED_DURING_TLS if self._tls is not None else None,
            )
        reason, present = self._connack
        if reason.is_failure:
            raise SourceError(
                f"{self.dataset}: {self.where} refused the connection: {reason}",
                dataset=self.dataset,
                hint="check client_id, username and password_env",
            )
        self.session_present = present
        return present

    def subscribe(self, topics: list[str], qos: int) -> None:
        """Subscribe to ``topics``; retained messages are sent only for a subscription the
        session did not have yet (not again on every run)."""
        from paho.mqtt.subscribeoptions import SubscribeOptions

        options = SubscribeOptions(qos=qos, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)
        _, mid = self.client.subscribe([(t, options) for t in topics])
        codes = self._wait_for(mid, "SUBSCRIBE")
        for topic, code in zip(topics, codes, strict=False):
            granted = getattr(code, "value", code)
            if getattr(code, "is_failure", False) or granted < qos:
                raise SourceError(
                    f"{self.dataset}: {self.where} did not grant QoS {qos} on {topic!r}: {code}",
                    dataset=self.dataset,
                    hint="QoS 1 is needed for redelivery after a crash; check the broker's ACL",
                )

    def unsubscribe(self, topics: list[str]) -> None:
        if topics:
            _, mid = self.client.unsubscribe(topics)
            self._wait_for(mid, "UNSUBSCRIBE")

    def ack(self, mid: int, qos: int) -> None:
        if qos > 0:
            self.client.ack(mid, qos)

    def close(self) -> None:
        """Disconnect; the session stays at the broker until it expires."""
        self._closing = True
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def _wait_for(self, mid: int | None, what: str) -> Any:
        deadline = time.monotonic() + self._timeout
        with self._acks:
            while mid not in self._acked:
                left = deadline - time.monotonic()
                if mid is None or left <= 0:
                    raise TransientSourceError(
                        f"{self.dataset}: {self.where} did not answer {what} within "
                        f"{self._timeout:g}s",
                        dataset=self.dataset,
                    )
                self._acks.wait(left)
            return self._acked.pop(mid)
