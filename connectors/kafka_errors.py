"""What a Kafka producer error means for the record it concerns, and how to catch it at all.

`classify_error` sorts librdkafka errors into retriable (try again later), permanent for one record (it
can never be delivered; the records after it can) and fatal (the producer itself is unusable).
`producer_call` turns the three shapes in which confluent-kafka raises a producer error into one value.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import KafkaError, KafkaException

__all__ = ["FATAL", "PERMANENT", "RETRIABLE", "classify_error", "kafka_error", "producer_call"]

T = TypeVar("T")

RETRIABLE, PERMANENT, FATAL = "retriable", "permanent", "fatal"
# Refusals of one record: sending it again can only fail again, and the records after it are unaffected.
_PERMANENT_CODES = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,  # larger than message.max.bytes (raised by produce()) or the topic's limit
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.INVALID_MSG,  # CORRUPT_MESSAGE
        KafkaError.INVALID_MSG_SIZE,
        KafkaError.INVALID_TIMESTAMP,
        KafkaError.INVALID_CONFIG,  # the topic's config refuses the record
        KafkaError.POLICY_VIOLATION,
        KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
        KafkaError._BAD_MSG,
        KafkaError._INVALID_ARG,  # produce() refused the record's arguments
    }
)
# The idempotent producer's sequence state is lost: only a new producer (new producer id) can go on.
_FATAL_CODES = frozenset(
    {KafkaError._FATAL, KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER, KafkaError.UNKNOWN_PRODUCER_ID,
     KafkaError.INVALID_PRODUCER_EPOCH}
)


def classify_error(error: KafkaError) -> str:
    """`FATAL`, `PERMANENT` (for this one record) or `RETRIABLE`.

    Everything that is not about the record itself is retried, including errors that need an operator
    (unknown topic, authorization): holding the flow until they are fixed is safer than quietly diverting
    every record to the quarantine.
    """
    if error.fatal() or error.code() in _FATAL_CODES:
        return FATAL
    if error.code() in _PERMANENT_CODES:
        return PERMANENT
    return RETRIABLE


def producer_call(call: Callable[[], T]) -> tuple[T | None, KafkaError | None]:
    """Run produce()/flush()/poll(): (its result, None), or (None, the Kafka error it raised).

    confluent-kafka reports a failed producer (a fatal idempotence error) by raising from whichever call
    serves callbacks, in three shapes, all measured here (UNKNOWN_PRODUCER_ID after tansu lost the
    producer's state): a KafkaException; a SystemError chained to it, when a delivery report was served
    while that exception was pending; or a bare KafkaError object, which is no BaseException and which only
    a bare `except:` catches. Anything else (KeyboardInterrupt included) propagates.
    """
    try:
        return call(), None
    except:  # noqa: E722 - see above: `except BaseException` misses a bare KafkaError
        error = kafka_error(sys.exc_info()[1])
        if error is None:
            raise
        return None, error


def kafka_error(exc: object) -> KafkaError | None:
    """The KafkaError behind `exc` (in any of the shapes above), or None when it is no Kafka error."""
    if isinstance(exc, KafkaError):
        return exc
    cause = exc.__cause__ or exc.__context__ if isinstance(exc, SystemError) else exc
    if isinstance(cause, KafkaException) and cause.args and isinstance(cause.args[0], KafkaError):
        return cause.args[0]
    return None
