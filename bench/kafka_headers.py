"""What reading a Kafka message's headers costs a consumer, against reading its value and key: why the device
signature travels in the value (`plantpulse.device_signing`).

    python -m bench.kafka_headers            # 50,000 messages with the two headers the old format sent

Messages with two headers (a key id and a 64-character signature) are produced to the embedded broker, then
consumed five times with a fresh consumer each; each time every message's `headers()`, `value()` and
`key()` is timed on its own (confluent-kafka builds the header list on the first `headers()` call). Prints
the medians in microseconds per message as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from confluent_kafka import Consumer, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from connectors.broker import EmbeddedBroker

TOPIC = "headers-cost"


def _consume_all(bootstrap: str, count: int) -> list[Message]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "headers-cost", "enable.auto.commit": False})
    consumer.assign([TopicPartition(TOPIC, 0, 0)])
    messages: list[Message] = []
    try:
        while len(messages) < count:
            messages += [m for m in consumer.consume(10_000, 5) if m.error() is None]
    finally:
        consumer.close()
    return messages


def measure(count: int, runs: int) -> dict:
    with EmbeddedBroker() as broker:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic(TOPIC, 1, 1)])[TOPIC].result()
        producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 50})
        for i in range(count):
            machine = b"M%05d" % (i % 1000)
            producer.produce(TOPIC, value=b"x" * 150, key=machine,
                             headers=[("pp-kid", machine + b".k1"), ("pp-sig", b"a" * 64)])
            if i % 10_000 == 0:
                producer.flush()
        producer.flush()
        timings: dict[str, list[float]] = {"headers": [], "value": [], "key": []}
        for _ in range(runs):
            messages = _consume_all(broker.bootstrap, count)
            for name, seconds in timings.items():
                started = time.perf_counter()
                for message in messages:
                    getattr(message, name)()
                seconds.append((time.perf_counter() - started) / len(messages) * 1e6)
    return {"messages": count, "runs": runs,
            **{f"{name}_us_per_message": round(statistics.median(s), 3) for name, s in timings.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(measure(args.messages, args.runs)))


if __name__ == "__main__":
    main()
