"""The Redis Streams backend (R2.2) on redis-py (+hiredis): ``redis://[:password@]host:port/db``.

Options are :class:`RedisOptions` (the ``[bus.redis]`` settings plus ``connect_timeout_s``),
the URL's ``?name=value`` overriding them (``pubsub_topics=a,b``; ``maxlen=none`` keeps all).

Key layout (``P`` = the ``prefix`` option; a topic partition's stream is ``S``):

- ``P:topics``: hash, topic -> ``{"partitions": n, "retention_ms": r}``.
- ``S = P:{topic}:{partition}``: the partition's log, one stream entry per record, with fields
  ``v`` value, ``t`` timestamp (ms), ``k`` key and ``h`` headers (msgpack) when present.
  Entries are added with id ``0-*``: Redis (>= 7) numbers them 0-1, 0-2, ... atomically, so
  whatever the number of producers, the record at offset ``o`` has id ``0-(o+1)``.
- ``S:committed``: hash, group -> committed offset. ``S:holds``: hash, group -> the offset from
  which the group may still need the stream (its owner's start offset, then its commit).
- ``P:group:{group}:members``: hash, member -> subscribed topics (JSON);
  ``P:group:{group}:member:{member}``: the member's heartbeat, expiring after ``session_timeout_ms``.
- pub/sub channel ``P:live:{topic}`` for the topics in ``pubsub_topics``: each record, once
  flushed, as msgpack ``[partition, offset, timestamp_ms, key, value, headers]``.

Consumer groups with Kafka semantics on top of Redis groups (which alone are competing
consumers): members heartbeat their key and every member derives the same split from the live
members with :func:`assign_partitions` (re-checked every poll, at most every 0.1 s), so each
partition has one owner. The owner reads with XREADGROUP from the tradepipe group's Redis group
on the stream; its position is the truth and the group's cursor follows it: on taking a partition
over (or after seek / start offsets, or when another reader moved the cursor) it sets the cursor
to its position with XGROUP SETID, so re-reading from the group's commit redelivers whatever was
polled and not committed (Redis moves re-read pending entries to the new reader). Commit = XACK of
the polled entries below the offset + the offset stored, in one MULTI.

A partition is taken over only once no other consumer has pending entries on it, the rule that
gives Kafka's "one owner at a time": a member that loses a partition releases it at its next
poll (XGROUP DELCONSUMER, which drops its pending entries without acknowledging them; close()
does the same); the pending entries of a member that crashed are taken with XAUTOCLAIM once they
have been idle ``claim_idle_ms``. A crashed member's partitions thus move after its heartbeat
expires (``session_timeout_ms``) and its last read is ``claim_idle_ms`` old.

Trimming rule: every ``maxlen // 10`` appends to a stream, its producer trims it (XTRIM MINID,
exact, in one Lua script so no commit slips in between) to keep every entry from
``min(end - maxlen, lowest hold of any group)`` on: at least the last ``maxlen`` entries, and
nothing a group has not committed, whether its members are alive now or not. A group holds its
streams until :meth:`RedisBus.delete_group` removes it. ``retention_ms`` is stored but not
applied: entries carry their time in a field, not in the id, so trimming by age would need a scan.

Producers pipeline ``pipeline_size`` XADDs per round trip (``transaction=False``); unsent records
stay queued when Redis cannot be reached (:class:`BusUnavailableError`) and are sent again by the
next flush (a pipeline cut off half way is resent whole: at-least-once, duplicates possible).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import msgspec
import redis
from pydantic import Field, ValidationError
from redis.backoff import ExponentialBackoff
from redis.retry import Retry
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from tradepipe.bus.base import (
    DEFAULT_PARTITIONS, Bus, BusClosedError, BusError, BusUnavailableError, BusURLError, Consumer,
    LogConsumer, Producer, Record, TopicInfo, TopicPartition, UnknownTopicError, assign_partitions,
    check_record_types, now_ms,
)
from tradepipe.bus.partitioner import partition_for
from tradepipe.config import RedisSettings

log = logging.getLogger(__name__)

MEMBERSHIP_REFRESH_S = 0.1  # how stale a consumer's view of its group may get; keeps poll() cheap
TAKEOVER_RETRY_S = 0.05  # how often a new owner checks whether the previous one let go
MAX_BUFFERED_PIPELINES = 100  # a producer that cannot reach Redis buffers this many pipelines, then blocks
SCAN_BATCH = 1000  # entries per XRANGE when scanning for a timestamp
TRIM_FRACTION = 10  # a stream is trimmed every maxlen // TRIM_FRACTION appends
COMMAND_RETRIES = 3  # redis-py's own retries of a command on a dropped connection, before BusUnavailableError

# XINFO STREAM's last-generated-id: the end offset, also once trimming emptied the stream.
_LUA_END_OFFSET = """
local function end_offset(key)
  if redis.call('EXISTS', key) == 0 then return 0 end
  local info = redis.call('XINFO', 'STREAM', key)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then return tonumber(string.match(info[i + 1], '%-(%d+)$')) end
  end
end
"""
END_OFFSETS_LUA = _LUA_END_OFFSET + """
local ends = {}
for i, key in ipairs(KEYS) do ends[i] = end_offset(key) end
return ends
"""
# KEYS: stream, its holds hash; ARGV: maxlen. Returns the number of entries removed.
TRIM_LUA = _LUA_END_OFFSET + """
local keep_from = end_offset(KEYS[1]) - tonumber(ARGV[1])
for _, hold in ipairs(redis.call('HVALS', KEYS[2])) do keep_from = math.min(keep_from, tonumber(hold)) end
if keep_from <= 0 then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', '0-' .. (keep_from + 1))
"""
# KEYS: member key, members hash; ARGV: token, session ms, member, topics, "join" | "beat".
# Returns 1, 2 (the heartbeat had expired: joined again) or 0 (another incarnation of this
# static member took its place: fenced).
HEARTBEAT_LUA = """
local holder = redis.call('GET', KEYS[1])
if ARGV[5] == 'beat' and holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
if ARGV[5] == 'beat' and not holder then return 2 end
return 1
"""
# KEYS: members hash; ARGV: member key prefix. Live members and their topics (flat); forgets dead ones.
LIVE_MEMBERS_LUA = """
local live = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if redis.call('EXISTS', ARGV[1] .. all[i]) == 1 then
    live[#live + 1] = all[i]
    live[#live + 1] = all[i + 1]
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return live
"""
# KEYS: member key, members hash; ARGV: token, member. Leaves unless fenced.
LEAVE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
redis.call('HDEL', KEYS[2], ARGV[2])
"""

Headers = tuple[tuple[str, bytes], ...]
_encode = msgspec.msgpack.Encoder().encode
_decode_headers = msgspec.msgpack.Decoder(Headers).decode
_decode_live = msgspec.msgpack.Decoder(tuple[int, int, int, bytes | None, bytes, Headers]).decode
_topic_meta = msgspec.json.Decoder(dict[str, int | None]).decode


def _cursor_before(offset: int) -> bytes:
    """The id a group's cursor (last delivered id) has when ``offset`` is the next to deliver."""
    return b"0-%d" % offset


def _offset(entry_id: bytes) -> int:
    """The offset of the record with stream id ``entry_id`` (``0-(offset+1)``)."""
    return int(entry_id[2:]) - 1



class RedisOptions(RedisSettings):
    """The ``[bus.redis]`` settings plus what only a URL or caller sets."""

    connect_timeout_s: float = Field(10.0, gt=0, description="at start, keep retrying an unreachable Redis "
                                     "this long (with backoff) before failing")


def parse_redis_url(url: str, options: Mapping[str, Any] | None = None) -> tuple[str, str, RedisOptions]:
    """``redis://[:pw@]host:port/db[?option=value]`` -> (URL for redis-py without the query,
    address for messages without credentials, options with the query on top)."""
    parts = urlsplit(url)
    db = parts.path.strip("/")
    if parts.scheme.lower() != "redis" or not parts.hostname or not (db == "" or db.isdigit()):
        raise BusURLError(f"bad Redis URL {url!r}: expected redis://host:port/db[?option=value]")
    try:
        port = parts.port or 6379
    except ValueError:
        raise BusURLError(f"bad Redis URL {url!r}: the port is not a number") from None
    merged = dict(options or {})
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name == "pubsub_topics":
            merged[name] = tuple(t for t in value.split(",") if t)
        else:
            merged[name] = None if value.lower() in ("", "none") else value
    try:
        parsed = RedisOptions.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise BusURLError(f"bad Redis option in {url!r}: {problems}") from None
    if not parsed.prefix:
        raise BusURLError(f"bad Redis URL {url!r}: prefix must not be empty")
    address = f"redis://{parts.hostname}:{port}/{db or 0}"
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), address, parsed


class _Keys:
    """Redis key names (see the module docstring)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.topics = f"{prefix}:topics"

    def stream(self, topic: str, partition: int) -> str:
        return f"{self.prefix}:{topic}:{partition}"

    def members(self, group: str) -> str:
        return f"{self.prefix}:group:{group}:members"

    def member(self, group: str, member: str) -> str:
        return f"{self.prefix}:group:{group}:member:{member}"

    def channel(self, topic: str) -> str:
        return f"{self.prefix}:live:{topic}"

    @staticmethod
    def committed(stream: str) -> str:
        return f"{stream}:committed"

    @staticmethod
    def holds(stream: str) -> str:
        return f"{stream}:holds"


class _Connection:
    """One redis-py client of a bus object, its scripts, and errors turned into BusErrors."""

    def __init__(self, client_url: str, address: str, options: RedisOptions) -> None:
        self.address = address
        self.keys = _Keys(options.prefix)
        self.client = redis.Redis.from_url(
            client_url, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), COMMAND_RETRIES),
            socket_connect_timeout=5, socket_timeout=30,
            protocol=3)  # RESP3: consumers decode raw XREAD replies, which are maps stream -> entries
        self.end_offsets = self.client.register_script(END_OFFSETS_LUA)
        self.trim = self.client.register_script(TRIM_LUA)
        self._partitions: dict[str, int] = {}
        self.closed = False

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        if self.closed:
            raise BusClosedError(f"{self.address}: closed")
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise BusUnavailableError(f"{self.address}: {what}: Redis unreachable: {exc}") from exc
        except redis.RedisError as exc:
            raise BusError(f"{self.address}: {what}: {exc}") from exc

    def wait_until_reachable(self, budget_s: float) -> None:
        """Fail clearly, after retries with backoff, if Redis does not answer."""
        started = time.monotonic()
        retrying = Retrying(stop=stop_after_delay(budget_s), wait=wait_exponential(multiplier=0.1, max=2),
                            retry=retry_if_exception_type((redis.ConnectionError, redis.TimeoutError)))
        try:
            retrying(self._ping_once)
        except RetryError as exc:
            attempts = exc.last_attempt.attempt_number
            raise BusError(f"{self.address}: Redis not reachable after {attempts} attempts over "
                           f"{time.monotonic() - started:.1f} s: {exc.last_attempt.exception()}") from None

    def _ping_once(self) -> None:
        # One attempt, without redis-py's own retries: tenacity counts and spaces the attempts.
        retry = self.client.get_retry()
        self.client.set_retry(Retry(ExponentialBackoff(), 0))
        try:
            self.client.ping()
        finally:
            self.client.set_retry(retry)

    def partitions(self, topic: str) -> int:
        count = self._partitions.get(topic)
        if count is None:
            raw = self.client.hget(self.keys.topics, topic)
            if raw is None:
                raise UnknownTopicError(topic)
            count = self._partitions[topic] = _topic_meta(raw)["partitions"]
        return count

    def streams(self, topic: str) -> list[str]:
        return [self.keys.stream(topic, p) for p in range(self.partitions(topic))]

    def stream_of(self, tp: TopicPartition) -> str:
        count = self.partitions(tp.topic)
        if not 0 <= tp.partition < count:
            raise BusError(f"{tp.topic!r} has no partition {tp.partition} ({count} partitions)")
        return self.keys.stream(*tp)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.client.close()


def _raise_unless_missing(results: list) -> None:
    """Raise the first error among pipeline results, except "no such stream / group": a
    partition never written to has no stream, a group that never read it has no Redis group."""
    for result in results:
        if isinstance(result, redis.ResponseError) and not (
                str(result).startswith("NOGROUP") or "requires the key to exist" in str(result)):
            raise result


def _raw_reply(response: Any, **options: Any) -> Any:
    return response


def _record(topic: str, partition: int, entry_id: bytes, fields: list[bytes]) -> Record:
    """A record from a stream entry as Redis sends it: ``[b"v", value, b"t", ts, (b"k", key),
    (b"h", headers)]``, the order producers write (redis-py's dict per entry costs ~20 % of a read)."""
    key, headers = None, ()
    for i in range(4, len(fields), 2):
        if fields[i] == b"k":
            key = fields[i + 1]
        else:
            headers = _decode_headers(fields[i + 1])
    return Record(topic, partition, _offset(entry_id), fields[1], key, int(fields[3]), headers)


class RedisProducer(Producer):
    """Queues XADDs and sends them ``pipeline_size`` per round trip (send() sends a full
    pipeline at once, so memory stays bounded); records are visible once their pipeline ran."""

    def __init__(self, conn: _Connection, options: RedisOptions) -> None:
        self._conn = conn
        self._pipeline_size = options.pipeline_size
        self._max_buffered = options.pipeline_size * MAX_BUFFERED_PIPELINES
        self._maxlen = options.maxlen
        self._trim_every = max(1, (options.maxlen or 0) // TRIM_FRACTION)
        self._fanout_topics = frozenset(options.pubsub_topics)
        self._streams: dict[str, list[str]] = {}
        self._buffer: list[list[Any]] = []  # XADD commands not yet sent
        self._sent = 0  # records taken off the buffer so far: numbers the buffered ones
        self._fanout: list[tuple[int, str, int, int, bytes | None, bytes, Headers]] = []  # (number, record...)
        self._appended: dict[str, int] = {}  # stream -> appends since its last trim
        self._next_auto_flush = self._pipeline_size
        self._round_robin = 0

    def send(self, topic, value, key=None, *, timestamp_ms=None, headers=(), partition=None) -> None:
        streams = self._streams.get(topic)
        if streams is None:
            with self._conn.errors("send"):
                streams = self._streams[topic] = self._conn.streams(topic)
        if partition is None:
            if key is None:
                self._round_robin += 1
                partition = self._round_robin % len(streams)
            else:
                partition = partition_for(key, len(streams))
        elif not 0 <= partition < len(streams):
            raise ValueError(f"partition {partition} out of range for {topic!r} ({len(streams)} partitions)")
        headers = tuple(headers)
        check_record_types(value, key, headers)
        timestamp_ms = now_ms() if timestamp_ms is None else int(timestamp_ms)
        stream = streams[partition]
        command = ["XADD", stream, "0-*", b"v", value, b"t", timestamp_ms]
        if key is not None:
            command += (b"k", key)
        if headers:
            command += (b"h", _encode(headers))
        self._buffer.append(command)
        if self._maxlen is not None:
            self._appended[stream] = self._appended.get(stream, 0) + 1
        if topic in self._fanout_topics:
            self._fanout.append((self._sent + len(self._buffer) - 1, topic, partition, timestamp_ms, key, value, headers))
        if len(self._buffer) >= self._next_auto_flush:
            self._auto_flush()

    def _auto_flush(self) -> None:
        """Send the full pipelines; while Redis is away keep buffering up to a bound, then block
        (backpressure) until it takes records again."""
        try:
            self._send_pipelines(full_only=True)
        except BusUnavailableError as exc:
            if len(self._buffer) < self._max_buffered:
                log.warning("%s; %d records buffered", exc, len(self._buffer))
                self._next_auto_flush = len(self._buffer) + self._pipeline_size
                return
            for attempt in Retrying(wait=wait_exponential(multiplier=0.05, max=2),
                                    retry=retry_if_exception_type(BusUnavailableError),
                                    before_sleep=lambda state: log.warning(
                                        "producer blocked, %d records buffered: %s", len(self._buffer),
                                        state.outcome.exception())):
                with attempt:
                    self._send_pipelines(full_only=True)
        self._next_auto_flush = self._pipeline_size

    def _send_pipelines(self, full_only: bool, deadline: float | None = None) -> int:
        sent = 0
        while len(self._buffer) >= (self._pipeline_size if full_only else 1):
            if deadline is not None and time.monotonic() > deadline:
                raise BusUnavailableError(f"{self._conn.address}: flush did not finish in time; "
                                          f"{len(self._buffer)} records still queued")
            sent += self._send_pipeline()
        return sent

    def _send_pipeline(self) -> int:
        batch = self._buffer[:self._pipeline_size]
        with self._conn.errors("send records"):
            pipe = self._conn.client.pipeline(transaction=False)
            for command in batch:
                pipe.execute_command(*command)
            ids = pipe.execute()
        del self._buffer[:len(batch)]
        first, self._sent = self._sent, self._sent + len(batch)
        if self._fanout and self._fanout[0][0] < self._sent:
            self._publish(first, ids)
        return len(batch)

    def _publish(self, first: int, ids: list[bytes]) -> None:
        """Fan the records just appended out on pub/sub, with their offsets (best effort: a
        live view that misses one can read it from the stream)."""
        done = [f for f in self._fanout if f[0] < self._sent]
        self._fanout = self._fanout[len(done):]
        with self._conn.errors("publish"):
            pipe = self._conn.client.pipeline(transaction=False)
            for number, topic, partition, timestamp_ms, key, value, headers in done:
                envelope = (partition, _offset(ids[number - first]), timestamp_ms, key, value, headers)
                pipe.publish(self._conn.keys.channel(topic), _encode(envelope))
            pipe.execute()

    def flush(self, timeout_s: float | None = None) -> int:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        sent = self._send_pipelines(full_only=False, deadline=deadline)
        self._next_auto_flush = self._pipeline_size
        self._trim_due()
        return sent

    def _trim_due(self) -> None:
        due = [stream for stream, count in self._appended.items() if count >= self._trim_every]
        for stream in due:
            with self._conn.errors("trim"):
                removed = self._conn.trim(keys=[stream, self._conn.keys.holds(stream)], args=[self._maxlen])
            del self._appended[stream]
            log.debug("trimmed %d entries from %s", removed, stream)

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self._conn.close()


class RedisConsumer(LogConsumer):
    """A group member (or a group-less reader); see the module docstring for the group design.

    LogConsumer asks for records partition by partition; a round trip per partition would
    dominate, so the first ask of a poll reads every partition in one XREADGROUP (XREAD without
    a group), splitting ``max_records`` over them, and the others are served from what came
    back. Waiting for records is that same read with BLOCK, so a record is returned in the
    round trip that saw it arrive."""

    def __init__(self, conn: _Connection, options: RedisOptions, group, topics, instance_id,
                 auto_offset_reset) -> None:
        try:
            super().__init__(group, topics, auto_offset_reset)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._client = conn.client
        for command in ("XREADGROUP", "XREAD"):  # raw replies, decoded by _record
            self._client.set_response_callback(command, _raw_reply)
        self._session_timeout_ms = options.session_timeout_ms
        self._claim_idle_ms = options.claim_idle_ms
        self.member_id = instance_id or uuid.uuid4().hex
        self._member = self.member_id.encode()
        self._token = uuid.uuid4().hex
        self._fenced = False
        self._assignment: frozenset[TopicPartition] = frozenset()
        self._unsynced: set[TopicPartition] = set()  # partitions whose group cursor must be set first
        self._retry_takeover_at: dict[TopicPartition, float] = {}
        self._ahead: dict[TopicPartition, list[Record]] = {}  # read from Redis, not yet returned
        self._read_due = True  # whether the next _fetch reads from Redis (once per poll round)
        self._budget = 0  # max_records of the current poll
        # delivered to us, not yet acknowledged: per partition, (first offset, last offset, ids) per read
        self._unacked: dict[TopicPartition, list[tuple[int, int, list[bytes]]]] = {}
        self._stored: dict[TopicPartition, int] = {}  # what we last committed: unchanged ones are not written again
        self._streams: dict[TopicPartition, str] = {}
        self._stream_tps: dict[bytes, TopicPartition] = {}
        self._next_refresh = 0.0
        self._next_heartbeat = 0.0
        try:
            with conn.errors("subscribe"):
                for topic in self.subscription:
                    conn.partitions(topic)
                if group is not None:
                    self._member_key = conn.keys.member(group, self.member_id)
                    self._member_key_prefix = conn.keys.member(group, "")
                    self._members_key = conn.keys.members(group)
                    self._heartbeat_script = self._client.register_script(HEARTBEAT_LUA)
                    self._live_members = self._client.register_script(LIVE_MEMBERS_LUA)
                    self._leave_script = self._client.register_script(LEAVE_LUA)
                    self._heartbeat("join")
        except BaseException:
            conn.close()
            raise

    def _stream(self, tp: TopicPartition) -> str:
        stream = self._streams.get(tp)
        if stream is None:
            stream = self._streams[tp] = self._conn.stream_of(tp)
            self._stream_tps[stream.encode()] = tp
        return stream

    # -- public methods: Redis errors become BusErrors ------------------------------------------
    def poll(self, max_records: int = 500, timeout_s: float = 0.0) -> list[Record]:
        with self._conn.errors("poll"):
            self._read_due = True
            self._budget = max_records
            return super().poll(max_records, timeout_s)

    def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        with self._conn.errors("commit"):
            super().commit(offsets)

    def committed(self, tp: TopicPartition) -> int | None:
        with self._conn.errors("read committed offset"):
            return super().committed(tp)

    def assignment(self) -> frozenset[TopicPartition]:
        with self._conn.errors("assignment"):
            return super().assignment()

    def assign(self, partitions: Iterable[TopicPartition]) -> None:
        partitions = [TopicPartition(*tp) for tp in partitions]
        with self._conn.errors("assign"):
            for tp in partitions:
                self._stream(tp)
            super().assign(partitions)
        self._ahead.clear()

    def seek(self, tp: TopicPartition, offset: int) -> None:
        super().seek(tp, offset)
        self._reposition(tp)

    def set_start_offsets(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp in offsets:
            if tp in self._positions:
                self._reposition(tp)
        super().set_start_offsets(offsets)

    def _reposition(self, tp: TopicPartition) -> None:
        """``tp``'s position changed under us: what was read ahead is void, the cursor must follow."""
        self._ahead.pop(tp, None)
        if self.group is not None:
            self._unsynced.add(tp)

    def close(self) -> None:
        if self._conn.closed:
            return
        try:
            with self._conn.errors("leave group"):
                super().close()
        finally:
            self._conn.close()

    # -- group membership -------------------------------------------------------------------
    def _heartbeat(self, mode: str) -> None:
        status = self._heartbeat_script(
            keys=[self._member_key, self._members_key],
            args=[self._token, self._session_timeout_ms, self.member_id, json.dumps(self.subscription), mode])
        if status == 0:
            self._fenced = True
            raise BusError(f"consumer {self.member_id!r} of group {self.group!r} was fenced: "
                           "another consumer joined with the same instance_id")
        if status == 2:  # no poll for a whole session: the others may have taken our partitions
            self._release(self._assignment)
            self._assignment = frozenset()
            self._positions.clear()
        self._next_heartbeat = time.monotonic() + self._session_timeout_ms / 3000

    def _group_assignment(self) -> frozenset[TopicPartition]:
        now = time.monotonic()
        if now < self._next_refresh:
            return self._assignment
        if now >= self._next_heartbeat:
            self._heartbeat("beat")
        live = self._live_members(keys=[self._members_key], args=[self._member_key_prefix])
        subscriptions = {live[i].decode(): json.loads(live[i + 1]) for i in range(0, len(live), 2)}
        subscriptions[self.member_id] = self.subscription
        counts = {}
        for topics in subscriptions.values():
            for topic in topics:
                try:
                    counts[topic] = self._conn.partitions(topic)
                except UnknownTopicError:
                    pass  # another member's topic this Redis does not have: nothing to split
        assignment = assign_partitions(subscriptions, counts)[self.member_id]
        self._release(self._assignment - assignment)
        self._unsynced |= assignment - self._assignment
        self._assignment = assignment
        self._next_refresh = now + MEMBERSHIP_REFRESH_S
        return assignment

    def _release(self, partitions: Iterable[TopicPartition]) -> None:
        """Let go of partitions: drop our pending entries there (unacknowledged: the next owner
        reads them again from the group's commit), so the next owner may start at once."""
        pipe = self._client.pipeline(transaction=False)
        for tp in partitions:
            pipe.xgroup_delconsumer(self._stream(tp), self.group, self.member_id)
            for state in (self._ahead, self._unacked, self._stored, self._retry_takeover_at):
                state.pop(tp, None)
            self._unsynced.discard(tp)
        _raise_unless_missing(pipe.execute(raise_on_error=False))

    def _leave(self) -> None:
        if not self._fenced:  # our successor reads under the same consumer name: leave its entries alone
            self._release(self._assignment)
        self._leave_script(keys=[self._member_key, self._members_key], args=[self._token, self.member_id])

    def _take_over(self, tp: TopicPartition, start: int) -> bool:
        """Point the group's cursor at ``start`` for us, once no other consumer has pending
        entries on the stream (taking those idle ``claim_idle_ms``); False: not yet. The
        group's hold drops to ``start`` if that is lower (a commit sets it)."""
        stream, group = self._stream(tp), self.group
        pipe = self._client.pipeline(transaction=False)
        pipe.xgroup_create(stream, group, id=_cursor_before(start), mkstream=True)
        pipe.xpending(stream, group)
        pipe.hget(self._conn.keys.holds(stream), group)
        created, pending, hold = pipe.execute(raise_on_error=False)
        for result in (created, pending, hold):
            if isinstance(result, Exception) and not str(result).startswith("BUSYGROUP"):
                raise result
        held_by_others = sum(c["pending"] for c in pending["consumers"] if c["name"] != self._member)
        if held_by_others:
            self._client.xautoclaim(stream, group, self.member_id, self._claim_idle_ms, "0-0",
                                    count=held_by_others, justid=True)
            pending = self._client.xpending(stream, group)
            if any(c["name"] != self._member for c in pending["consumers"]):
                return False
        pipe = self._client.pipeline(transaction=True)
        if pending["pending"] and _offset(pending["min"]) < start:
            # ours now, and below where we start: handled by whoever committed or checkpointed them
            below = self._client.xpending_range(stream, group, min="-", max=_cursor_before(start),
                                                count=pending["pending"])
            pipe.xack(stream, group, *[entry["message_id"] for entry in below])
        pipe.xgroup_setid(stream, group, _cursor_before(start))
        if hold is None or int(hold) > start:
            pipe.hset(self._conn.keys.holds(stream), group, start)
        pipe.execute()
        self._unacked.pop(tp, None)  # what we hold from ``start`` on comes again
        return True

    # -- reading ----------------------------------------------------------------------------
    def _fetch(self, tp: TopicPartition, offset: int, limit: int) -> list[Record]:
        if self._read_due:
            self._read_due = False
            self._read(limit, block_ms=None)
        # What was read ahead starts at the position (repositioning drops it), or after it where
        # trimming removed entries.
        ahead = self._ahead.get(tp)
        if not ahead:
            return []
        if len(ahead) <= limit:
            del self._ahead[tp]
            return ahead
        self._ahead[tp] = ahead[limit:]
        return ahead[:limit]

    def _wait(self, timeout_s: float) -> None:
        self._read(self._budget, block_ms=max(1, int(timeout_s * 1000)))
        self._read_due = False

    def _read(self, budget: int, block_ms: int | None) -> None:
        """Read every partition with nothing ahead into ``_ahead``: up to ``budget`` records in
        all, waiting up to ``block_ms`` for the first (None: not at all)."""
        targets: dict[TopicPartition, int] = {}  # partition -> the offset its next record must have
        synced_now = set()
        now = time.monotonic()
        for tp, position in self._positions.items():
            if tp in self._ahead:
                continue
            if tp in self._unsynced:
                if now < self._retry_takeover_at.get(tp, 0.0):
                    continue
                if not self._take_over(tp, position):
                    self._retry_takeover_at[tp] = now + TAKEOVER_RETRY_S
                    continue
                self._unsynced.discard(tp)
                synced_now.add(tp)
            targets[tp] = position
        if not targets:
            if block_ms is not None:
                time.sleep(min(block_ms / 1000, TAKEOVER_RETRY_S))
            return
        if block_ms is not None and not self._unsynced.isdisjoint(self._positions):
            block_ms = min(block_ms, int(TAKEOVER_RETRY_S * 1000))  # a partition waits for its takeover
        while budget > 0 and targets:
            count = -(-budget // len(targets))
            reply = self._read_streams(targets, count, block_ms)
            block_ms = None
            full = {}
            for stream, entries in reply.items():
                tp = self._stream_tps[stream]
                records = self._accept(tp, targets[tp], entries, tp in synced_now)
                budget -= len(records)
                if len(entries) == count and records:
                    full[tp] = records[-1].offset + 1
            targets = full  # partitions with more to read, as long as the budget lasts

    def _read_streams(self, targets: Mapping[TopicPartition, int], count: int, block_ms: int | None) -> dict:
        """Raw reply: stream -> [[id, fields], ...] for the streams that had entries."""
        if self.group is None:
            return self._client.xread({self._stream(tp): _cursor_before(offset) for tp, offset in targets.items()},
                                      count=count, block=block_ms) or {}
        try:
            return self._client.xreadgroup(self.group, self.member_id, dict.fromkeys(map(self._stream, targets), b">"),
                                           count=count, block=block_ms) or {}
        except redis.ResponseError as exc:
            if not str(exc).startswith("NOGROUP"):
                raise
            self._unsynced.update(targets)  # a group was deleted under us: create it again
            return {}

    def _accept(self, tp: TopicPartition, expected: int, entries: list, synced_now: bool) -> list[Record]:
        """Records just read for ``tp`` into ``_ahead``; with a group, only if they follow on."""
        topic, partition = tp
        records = [_record(topic, partition, entry_id, fields) for entry_id, fields in entries]
        if self.group is not None:
            if records[0].offset != expected and not synced_now:
                # another reader moved the cursor (a member that has not yet seen it lost this
                # partition): set it back to our position and read again
                self._unsynced.add(tp)
                return []
            # (just synced and still a gap: trimming removed the entries up to the first one)
            self._unacked.setdefault(tp, []).append((records[0].offset, records[-1].offset, [e[0] for e in entries]))
        self._ahead.setdefault(tp, []).extend(records)
        return records

    # -- storage ----------------------------------------------------------------------------
    def _load_committed(self, tp: TopicPartition) -> int | None:
        raw = self._client.hget(self._conn.keys.committed(self._stream(tp)), self.group)
        return None if raw is None else int(raw)

    def _store_committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        pipe = self._client.pipeline(transaction=True)
        remaining = {}
        for tp, offset in offsets.items():
            stream = self._stream(tp)
            acked, remaining[tp] = self._split_unacked(tp, offset)
            if acked:
                pipe.xack(stream, self.group, *acked)
            if acked or self._stored.get(tp) != offset:
                pipe.hset(self._conn.keys.committed(stream), self.group, offset)
                pipe.hset(self._conn.keys.holds(stream), self.group, offset)
        if pipe.command_stack:
            pipe.execute()
        self._unacked.update(remaining)
        self._stored.update(offsets)

    def _split_unacked(self, tp: TopicPartition, offset: int) -> tuple[list[bytes], list]:
        """(ids of polled entries below ``offset``, the batches left to acknowledge)."""
        acked: list[bytes] = []
        kept = []
        for batch in self._unacked.get(tp, ()):
            first, last, ids = batch
            if last < offset:
                acked += ids
            elif first >= offset:
                kept.append(batch)
            else:
                acked += [i for i in ids if _offset(i) < offset]
                rest = [i for i in ids if _offset(i) >= offset]
                kept.append((_offset(rest[0]), last, rest))
        return acked, kept

    def _end_offset(self, tp: TopicPartition) -> int:
        return self._conn.end_offsets(keys=[self._stream(tp)])[0]


class LiveFeed:
    """Records of some topics as producers flush them, over Redis pub/sub, for live views:
    at most once, nothing kept for a subscriber that is away. Records carry their offsets, so a
    view can fill a gap from the stream. Iterate, or :meth:`get` with a timeout."""

    def __init__(self, conn: _Connection, topics: Sequence[str]) -> None:
        self._conn = conn
        self._topics = {conn.keys.channel(t).encode(): t for t in topics}
        with conn.errors("subscribe"):
            self._pubsub = conn.client.pubsub()
            self._pubsub.subscribe(*self._topics)
            # once Redis confirmed, every record flushed from now on reaches this feed
            confirmed = 0
            deadline = time.monotonic() + 10
            while confirmed < len(self._topics):
                if time.monotonic() > deadline:
                    raise BusUnavailableError(f"{conn.address}: no confirmation of the subscription")
                message = self._pubsub.get_message(timeout=1.0)
                if message is not None and message["type"] == "subscribe":
                    confirmed += 1

    def get(self, timeout_s: float) -> Record | None:
        """The next record, or None if none came within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._conn.errors("live feed"):
            while True:
                message = self._pubsub.get_message(timeout=max(0.0, deadline - time.monotonic()))
                if message is not None and message["type"] == "message":
                    partition, offset, timestamp_ms, key, value, headers = _decode_live(message["data"])
                    return Record(self._topics[message["channel"]], partition, offset, value, key,
                                  timestamp_ms, headers)
                if time.monotonic() >= deadline:
                    return None

    def __iter__(self) -> Iterator[Record]:
        while True:
            record = self.get(1.0)
            if record is not None:
                yield record

    def close(self) -> None:
        try:
            self._pubsub.close()
        finally:
            self._conn.close()

    def __enter__(self) -> LiveFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisBus(Bus):
    """Topics, partitions and groups on one Redis database; see the module docstring."""

    def __init__(self, client_url: str, address: str, options: RedisOptions | None = None, *,
                 url: str | None = None) -> None:
        self.options = options or RedisOptions()
        self.url = url or client_url
        self.address = address  # for messages: the URL may hold a password
        self._client_url = client_url
        self._conn = self._connection()
        try:
            self._conn.wait_until_reachable(self.options.connect_timeout_s)
        except BaseException:
            self._conn.close()
            raise

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any] | None = None) -> RedisBus:
        client_url, address, parsed = parse_redis_url(url, options)
        return cls(client_url, address, parsed, url=url)

    def _connection(self) -> _Connection:
        return _Connection(self._client_url, self.address, self.options)

    def _call(self, what: str, call: Callable[[], Any]) -> Any:
        with self._conn.errors(what):
            return call()

    def create_topic(self, name, partitions=DEFAULT_PARTITIONS, *, retention_ms=None) -> TopicInfo:
        if not isinstance(name, str) or not name:
            raise ValueError("a topic name must be a non-empty string")
        if partitions < 1:
            raise ValueError("a topic needs at least one partition")
        meta = msgspec.json.encode({"partitions": partitions, "retention_ms": retention_ms})
        if self._call("create topic", lambda: self._conn.client.hsetnx(self._conn.keys.topics, name, meta)):
            return TopicInfo(name, partitions, retention_ms)
        return self.topic(name)

    def topics(self) -> dict[str, TopicInfo]:
        raw = self._call("list topics", lambda: self._conn.client.hgetall(self._conn.keys.topics))
        infos = (TopicInfo(name.decode(), **_topic_meta(meta)) for name, meta in raw.items())
        return {info.name: info for info in sorted(infos, key=lambda info: info.name)}

    def producer(self) -> Producer:
        self._check_open()
        return RedisProducer(self._connection(), self.options)

    def consumer(self, group, topics: Sequence[str] = (), *, instance_id=None, auto_offset_reset="earliest") -> Consumer:
        self._check_open()
        return RedisConsumer(self._connection(), self.options, group, topics, instance_id, auto_offset_reset)

    def live(self, topics: Sequence[str]) -> LiveFeed:
        """Subscribe to records of ``topics`` (each in ``pubsub_topics``) as they are flushed."""
        self._check_open()
        not_fanned_out = [t for t in topics if t not in self.options.pubsub_topics]
        if not topics or not_fanned_out:
            raise ValueError(f"topics {not_fanned_out or list(topics)} are not fanned out on pub/sub; "
                             f"pubsub_topics is {list(self.options.pubsub_topics)}")
        return LiveFeed(self._connection(), topics)

    def _check_open(self) -> None:
        if self._conn.closed:
            raise BusClosedError(f"{self.address}: closed")

    def end_offsets(self, topic: str) -> dict[int, int]:
        streams = self._call("end offsets", lambda: self._conn.streams(topic))
        ends = self._call("end offsets", lambda: self._conn.end_offsets(keys=streams))
        return dict(enumerate(ends))

    def committed_offsets(self, group: str, topic: str) -> dict[int, int]:
        with self._conn.errors("committed offsets"):
            pipe = self._conn.client.pipeline(transaction=False)
            for stream in self._conn.streams(topic):
                pipe.hget(self._conn.keys.committed(stream), group)
            return {p: int(raw) for p, raw in enumerate(pipe.execute()) if raw is not None}

    def offsets_for_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        # Timestamps need not be monotonic and have no index (it would cost every append), so
        # this scans the stream: fine for tools like replay, not for a hot path.
        out = self.end_offsets(topic)
        with self._conn.errors("offsets for time"):
            for partition, stream in enumerate(self._conn.streams(topic)):
                start: bytes = b"-"
                while True:
                    entries = self._conn.client.xrange(stream, min=start, count=SCAN_BATCH)
                    found = next((_offset(i) for i, fields in entries if int(fields[b"t"]) >= timestamp_ms), None)
                    if found is not None:
                        out[partition] = found
                        break
                    if len(entries) < SCAN_BATCH:
                        break
                    start = b"(" + entries[-1][0]
        return out

    def delete_group(self, group: str) -> None:
        """Forget ``group`` on every topic (its commits, holds and Redis groups), so trimming no
        longer waits for it; its members must be gone."""
        with self._conn.errors("delete group"):
            pipe = self._conn.client.pipeline(transaction=False)
            for topic in self.topics():
                for stream in self._conn.streams(topic):
                    pipe.hdel(self._conn.keys.committed(stream), group)
                    pipe.hdel(self._conn.keys.holds(stream), group)
                    pipe.xgroup_destroy(stream, group)
            pipe.delete(self._conn.keys.members(group))
            _raise_unless_missing(pipe.execute(raise_on_error=False))

    def close(self) -> None:
        self._conn.close()
