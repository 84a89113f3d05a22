"""Messages of a broker → one batch's records and dead letters, with per-message metadata.

A broker source (Kafka, NATS, Redis Streams, MQTT) has, for each message, its payload (or
why it has none to decode: an entry deleted from its stream, a missing payload field) and
metadata (stream and entry id, topic, arrival time). :func:`assemble` decodes the payloads
with the source's :class:`~lakeforge.sources.payloads.PayloadDecoder`, joins each decoded
record to its
message's metadata columns, and turns every message that cannot be read into a dead letter
that names where it came from (``origin`` → ``source_file``, ``position`` → ``line``, and a
``label`` such as ``entry 1732000000000-3`` in front of the error, for positions that the
``line`` column cannot hold exactly). A field that is null in every message of a batch is a
text column (a column without a type cannot be written). A source reading many messages a
second hands them over column-wise (:class:`Payloads`): a :class:`Message` is then made only
of a message that becomes a dead letter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lakeforge.errors import SourceError
from lakeforge.sources.payloads import MESSAGE_INDEX, PayloadDecoder

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class Message:
    """One message as a broker source hands it over.

    Attributes:
        payload: the bytes to decode (None: nothing to decode, see ``problem``).
        origin: where it comes from, as the dead-letter queue names it (``redis://orders``).
        position: its number there, if it has one that fits an int64 (the dead letter's line).
        label: how the error names the message (``entry 1732000000000-3``); None: no prefix.
        problem: why the message cannot be decoded at all (it then is a dead letter).
    """

    payload: bytes | None
    origin: str
    position: int | None = None
    label: str | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Payloads:
    """A batch's messages column-wise: their payloads, and the message ``i`` as its dead
    letter names it (built only for a message that is one), for a batch too large to make a
    :class:`Message` of each.

    Attributes:
        payloads: one per message (None: nothing to decode, see ``problems``).
        describe: the message ``i`` (its origin, position and label).
        problems: message index → why it cannot be decoded at all.
    """

    payloads: Sequence[bytes | None]
    describe: Callable[[int], Message]
    problems: Mapping[int, str] = field(default_factory=dict)

    @classmethod
    def of(cls, messages: Sequence[Message]) -> Payloads:
        problems = {i: m.problem for i, m in enumerate(messages) if m.problem is not None}
        return cls([m.payload for m in messages], messages.__getitem__, problems)


def assemble(
    decoder: PayloadDecoder,
    messages: Sequence[Message] | Payloads,
    metadata: Mapping[str, pa.Array],
    dataset: str,
) -> tuple[pa.Table, pa.Table | None]:
    """(records, dead letters or None) of ``messages``.

    ``metadata``: column name → one value per message (in message order), appended to the
    records of the messages that decode. A payload field with the same name as a metadata
    column is an error (the metadata would be lost), with a hint to rename the columns.
    """
    import pyarrow as pa

    from lakeforge.sources import dead_letters

    batch = messages if isinstance(messages, Payloads) else Payloads.of(messages)
    count = len(batch.payloads)
    problems = dict(batch.problems)
    decodable: Sequence[int] = range(count)
    payloads = batch.payloads
    if problems:
        decodable = [i for i in range(count) if i not in problems]
        payloads = [payloads[i] for i in decodable]
    # The decoder's origin and positions are not used: each dead letter is rebuilt below
    # with its own message's origin (one batch may hold several streams or topics).
    records, rejects = decoder.decode(payloads, "", [None] * len(payloads))
    read = records.column(MESSAGE_INDEX)
    records = records.drop_columns([MESSAGE_INDEX])
    clash = sorted(set(records.column_names) & set(metadata))
    if clash:
        raise SourceError(
            f"{dataset}: payload field(s) {', '.join(map(repr, clash))} have the name of the "
            "source's metadata column(s)",
            dataset=dataset,
            hint="set the source's metadata_prefix (e.g. metadata_prefix: _src_) so the two "
            "get different names",
        )
    for index, column in enumerate(records.schema):
        if pa.types.is_null(column.type):
            # Only nulls in this batch (an optional field): text, as the REST source does,
            # rather than a column without a type, which no table can take.
            records = records.set_column(
                index, column.name, records.column(index).cast(pa.string())
            )
    everything = records.num_rows == count  # every message decoded: no row to pick
    rows = None if everything else pa.array([decodable[i] for i in read.to_pylist()], pa.int64())
    for name, values in metadata.items():
        records = records.append_column(name, values if rows is None else values.take(rows))
    if everything:
        return records, None
    errors = iter([] if rejects is None else rejects.column("error").to_pylist())
    read_set = set(read.to_pylist())
    for k, i in enumerate(decodable):
        if k not in read_set:
            problems[i] = next(errors)
    letters = []
    for i in sorted(problems):
        m = batch.describe(i)
        error = problems[i] if m.label is None else f"{m.label}: {problems[i]}"
        letters.append((m.payload, error, m.origin, m.position))
    return records, dead_letters.rejects(letters)
