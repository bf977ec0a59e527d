#!/usr/bin/env python3
"""Drives the official Apache RocketMQ 5 Python client (PyPI rocketmq-python-client 5.1.2),
unmodified, against a raftmq cluster. Run by tests/rocketmq5.rs; usable by hand:

    python3 tests/rocketmq5/official_client.py basics 127.0.0.1:9876 TopicA
    python3 tests/rocketmq5/official_client.py push 127.0.0.1:9876 TopicB
    python3 tests/rocketmq5/official_client.py dead-letter 127.0.0.1:9876 TopicC 3
    python3 tests/rocketmq5/official_client.py failover 127.0.0.1:9876 TopicD 12
    python3 tests/rocketmq5/official_client.py pop-failover 127.0.0.1:9876 TopicE
    python3 tests/rocketmq5/official_client.py delay 127.0.0.1:9876 TopicF
    python3 tests/rocketmq5/official_client.py sql 127.0.0.1:9876 TopicG
    python3 tests/rocketmq5/official_client.py transaction 127.0.0.1:9876 TopicH
    python3 tests/rocketmq5/official_client.py fifo-failover 127.0.0.1:9876 TopicI   (group g-fifo marked FIFO)

The failover modes print a line (SENDING, RECEIVED) when it is time to kill the master, and
go on when they read KILLED on stdin.

Each mode checks what a user would check and exits non-zero with the reason on the first
failure; the last line of a success is `RESULT {json}`.
"""
import json
import os
import sys
import threading
import time

from rocketmq import (ClientConfiguration, ConsumeResult, Credentials, FilterExpression, Message, Producer,
                      PushConsumer, SimpleConsumer, TransactionChecker)
from rocketmq.grpc_protocol import Code, FilterType, TransactionResolution
from rocketmq.v5.consumer import MessageListener
from rocketmq.v5.exception import BadRequestException, ClientException


def credentials():
    """RAFTMQ_ACCESS_KEY and RAFTMQ_SECRET_KEY when set (a secured cluster), else none."""
    ak, sk = os.environ.get("RAFTMQ_ACCESS_KEY"), os.environ.get("RAFTMQ_SECRET_KEY")
    return Credentials(ak, sk) if ak and sk else Credentials()


def config(endpoint, creds=None):
    return ClientConfiguration(endpoint, creds or credentials(), request_timeout=5)


def fail(why):
    print(f"FAILED: {why}", flush=True)
    os._exit(1)


def check(condition, why):
    if not condition:
        fail(why)


def message(topic, body, tag=None, keys=None, props=None):
    m = Message()
    m.topic = topic
    m.body = body
    if tag:
        m.tag = tag
    if keys:
        m.keys = keys
    for k, v in (props or {}).items():
        m.add_property(k, v)
    return m


def receive_until(consumer, want, deadline_s, invisible_s=20, ack=True):
    """Receives until `want(received)` holds; returns every message received, in order."""
    received = []
    end = time.time() + deadline_s
    while time.time() < end and not want(received):
        try:
            messages = consumer.receive(32, invisible_s)
        except ClientException as e:
            # What the server calls transient (no master during an election): try again, as an
            # application's receive loop does. Anything else fails the check.
            if e.code not in (Code.HA_NOT_AVAILABLE, Code.PROXY_TIMEOUT):
                raise
            time.sleep(0.2)
            continue
        for m in messages:
            received.append(m)
            if ack:
                consumer.ack(m)
    return received


def basics(endpoint, topic):
    producer = Producer(config(endpoint), (topic,))
    producer.startup()
    sent = {}
    for i in range(10):
        tag = "A" if i % 2 == 0 else "B"
        body = f"message {i}".encode()
        receipt = producer.send(message(topic, body, tag, f"key-{i}", {"n": str(i)}))
        check(receipt.message_id, "a send receipt carries the message id")
        sent[receipt.message_id] = (body, tag, i)
    big = os.urandom(4 << 20)
    big_receipt = producer.send(message(topic, big, "A", "big"))
    sent[big_receipt.message_id] = (big, "A", "big")
    try:
        producer.send(message("NoSuchTopic", b"x"))
        fail("a send to a topic that does not exist succeeded")
    except Exception as e:  # the client reports a failed route query as a plain Exception
        check("NoSuchTopic" in str(e), f"unexpected error for an unknown topic: {e}")
    producer.shutdown()

    # A tag filter delivers exactly the tagged messages, byte for byte, with their properties.
    consumer = SimpleConsumer(config(endpoint), "g-basics-a", {topic: FilterExpression("A")}, await_duration=3)
    consumer.startup()
    want_a = {mid for mid, (_, tag, _) in sent.items() if tag == "A"}
    got = receive_until(consumer, lambda r: {m.message_id for m in r} >= want_a, 30)
    ids = [m.message_id for m in got]
    check(set(ids) == want_a, f"tag A delivered {sorted(ids)}, expected {sorted(want_a)}")
    check(len(ids) == len(set(ids)), "an acknowledged message was delivered twice")
    for m in got:
        body, tag, n = sent[m.message_id]
        check(m.body == body, f"body of {m.message_id} differs ({len(m.body)} bytes vs {len(body)})")
        check(m.tag == tag, f"tag {m.tag} != {tag}")
        check(not m.corrupted, "the MD5 digest matches the body")
        check(m.delivery_attempt == 1, f"first delivery has attempt {m.delivery_attempt}")
        if n != "big":
            check(m.properties.get("n") == str(n), f"property n = {m.properties}")
            check(m.keys == {f"key-{n}"}, f"keys = {m.keys}")
    consumer.shutdown()

    # Invisibility: an unacknowledged message comes back with attempt 2; a changed one stays
    # away; a stale receipt handle is refused.
    consumer = SimpleConsumer(config(endpoint), "g-basics-all", {topic: FilterExpression("*")}, await_duration=3)
    consumer.startup()
    first = receive_until(consumer, lambda r: {m.message_id for m in r} >= set(sent), 30, invisible_s=30, ack=False)
    check(len(first) == len(sent), f"{len(first)} deliveries of {len(sent)} messages: one came back early")
    check({m.message_id for m in first} == set(sent), "every message is delivered to a second group")
    keep, extend, rest = first[0], first[1], first[2:]
    # `keep` comes back in 2 s instead of 30; `extend` stays away for 60 s.
    consumer.change_invisible_duration(keep, 2)
    old_handle = extend.receipt_handle
    consumer.change_invisible_duration(extend, 60)
    check(extend.receipt_handle != old_handle, "change invisible duration returns a new handle")
    for m in rest:
        consumer.ack(m)
    stale = Message()
    stale.topic = extend.topic
    stale.message_id = extend.message_id
    stale.receipt_handle = old_handle
    stale.endpoints = extend.endpoints
    try:
        consumer.ack(stale)
        fail("an ack with a stale receipt handle succeeded")
    except BadRequestException as e:
        check(e.code == Code.INVALID_RECEIPT_HANDLE, f"stale handle answered {e.code}")
    again = receive_until(consumer, lambda r: any(m.message_id == keep.message_id for m in r), 20, ack=False)
    back = [m for m in again if m.message_id == keep.message_id]
    check(back, "an unacknowledged message came back after its invisible duration")
    check(back[0].delivery_attempt == 2, f"redelivery attempt {back[0].delivery_attempt}")
    check(all(m.message_id != extend.message_id for m in again), "a message made invisible for 60 s came back")
    consumer.ack(back[0])
    consumer.ack(extend)
    try:
        consumer.ack(extend)
        fail("a second ack of the same delivery succeeded")
    except BadRequestException as e:
        check(e.code == Code.INVALID_RECEIPT_HANDLE, f"repeated ack answered {e.code}")
    consumer.shutdown()
    return {"sent": len(sent), "tag_a": len(want_a), "redelivered_attempt": back[0].delivery_attempt}


def push(endpoint, topic):
    delivered = {}
    lock = threading.Lock()

    class Listener(MessageListener):
        def consume(self, m):
            with lock:
                delivered.setdefault(m.message_id, []).append(m.delivery_attempt)
                n = len(delivered[m.message_id])
            # Odd messages fail their first delivery: the server must redeliver them.
            odd = int(m.body.decode().split()[1]) % 2 == 1
            return ConsumeResult.FAILURE if odd and n == 1 else ConsumeResult.SUCCESS

    consumer = PushConsumer(config(endpoint), "g-push", Listener(), {topic: FilterExpression("*")})
    consumer.startup()
    producer = Producer(config(endpoint), (topic,))
    producer.startup()
    ids = [producer.send(message(topic, f"push {i}".encode())).message_id for i in range(40)]
    producer.shutdown()
    end = time.time() + 60

    def done():
        with lock:
            return all(len(delivered.get(mid, [])) >= (2 if i % 2 else 1) for i, mid in enumerate(ids))

    while time.time() < end and not done():
        time.sleep(0.2)
    consumer.shutdown()
    check(done(), f"push consumer got {len(delivered)} of {len(ids)} messages, failures not all redelivered")
    for i, mid in enumerate(ids):
        attempts = delivered[mid]
        if i % 2:
            check(attempts[:2] == [1, 2], f"a failed message was redelivered with attempts {attempts}")
    return {"messages": len(ids), "redelivered": sum(1 for mid in ids if len(delivered[mid]) > 1)}


def dead_letter(endpoint, topic, max_attempts):
    producer = Producer(config(endpoint), (topic,))
    producer.startup()
    mid = producer.send(message(topic, b"poison")).message_id
    producer.shutdown()
    consumer = SimpleConsumer(config(endpoint), "g-dlq", {topic: FilterExpression("*")}, await_duration=2)
    consumer.startup()
    attempts = []
    end = time.time() + 30 + 3 * max_attempts
    # Never acknowledged: delivered max_attempts times, then moved to %DLQ%g-dlq.
    while time.time() < end:
        for m in consumer.receive(8, 1):
            check(m.message_id == mid, "only the poison message is in the topic")
            attempts.append(m.delivery_attempt)
        if len(attempts) >= max_attempts:
            # One more round must find nothing: the message is in the dead-letter topic now.
            extra = [m for _ in range(3) for m in consumer.receive(8, 1)]
            check(not extra, f"delivered again after {max_attempts} attempts: {[m.delivery_attempt for m in extra]}")
            break
    consumer.shutdown()
    check(attempts == list(range(1, max_attempts + 1)), f"delivery attempts were {attempts}")
    return {"attempts": attempts, "message_id": mid}


def failover(endpoint, topic, seconds):
    """Sends for `seconds` while the test kills the master (it writes KILLED on stdin), then
    reads everything back: every acknowledged message must be there."""
    producer = Producer(config(endpoint), (topic,))
    producer.startup()
    acked = {}
    errors = []
    killed_at = [None]

    def watch_stdin():
        killed_at[0] = wait_for_kill()

    threading.Thread(target=watch_stdin, daemon=True).start()
    start = time.time()
    i = 0
    announced = False
    while time.time() - start < seconds:
        body = f"failover {i}".encode()
        try:
            receipt = producer.send(message(topic, body))
            acked[receipt.message_id] = (body, time.time())
        except Exception as e:  # a failed send is allowed; a lost acknowledged one is not
            errors.append(f"{type(e).__name__}: {e}")
        i += 1
        if not announced and len(acked) >= 50:
            print("SENDING", flush=True)
            announced = True
    producer.shutdown()
    check(killed_at[0] is not None, "the test never killed the master")
    after_kill = sum(1 for _, t in acked.values() if t > killed_at[0] + 1)
    check(after_kill > 0, "no send was acknowledged after the master was killed")

    consumer = SimpleConsumer(config(endpoint), "g-failover", {topic: FilterExpression("*")}, await_duration=3)
    consumer.startup()
    seen = {}
    end = time.time() + 90
    while time.time() < end and not set(acked) <= set(seen):
        try:
            for m in consumer.receive(32, 30):
                seen.setdefault(m.message_id, m.body)
                consumer.ack(m)
        except Exception as e:  # the killed node may still be in the client's route
            errors.append(f"receive: {type(e).__name__}: {e}")
            time.sleep(0.2)
    consumer.shutdown()
    lost = [mid for mid in acked if mid not in seen]
    check(not lost, f"{len(lost)} acknowledged messages lost, e.g. {lost[:3]}")
    for mid, (body, _) in acked.items():
        check(seen[mid] == body, f"message {mid} came back with another body")
    return {"attempted": i, "acked": len(acked), "failed": len(errors), "acked_after_kill": after_kill,
            "lost": len(lost), "errors": errors[:5]}


def wait_for_kill():
    for line in sys.stdin:
        if line.strip() == "KILLED":
            return time.time()
    fail("stdin closed before the master was killed")


def pop_failover(endpoint, topic):
    """Deliveries in flight survive a master kill: acknowledged ones stay acknowledged,
    unacknowledged ones come back after their invisible duration with the next attempt."""
    producer = Producer(config(endpoint), (topic,))
    producer.startup()
    ids = [producer.send(message(topic, f"pop {i}".encode())).message_id for i in range(20)]
    producer.shutdown()
    consumer = SimpleConsumer(config(endpoint), "g-pop-failover", {topic: FilterExpression("*")}, await_duration=2)
    consumer.startup()
    invisible = 8
    first = receive_until(consumer, lambda r: {m.message_id for m in r} >= set(ids), 30, invisible_s=invisible,
                          ack=False)
    received_at = time.time()
    check(sorted(m.message_id for m in first) == sorted(ids), "every message delivered once before the kill")
    acked = {m.message_id for m in first[::2]}
    for m in first[::2]:
        consumer.ack(m)
    print("RECEIVED", flush=True)
    killed_at = wait_for_kill()
    back = {}
    end = time.time() + 60
    # Keep receiving a while after everything came back: an acknowledged message must not.
    settle = None
    errors = []
    while time.time() < end and (settle is None or time.time() < settle):
        try:
            for m in consumer.receive(32, 30):
                check(m.message_id not in acked, f"acknowledged message {m.message_id} delivered again after failover")
                back.setdefault(m.message_id, (m.delivery_attempt, time.time()))
                consumer.ack(m)
        except Exception as e:  # a consumer loop rides over the election: it retries
            errors.append(f"{type(e).__name__}: {e}")
            time.sleep(0.2)
        if settle is None and set(back) >= set(ids) - acked:
            settle = time.time() + 4
    consumer.shutdown()
    missing = set(ids) - acked - set(back)
    check(not missing, f"{len(missing)} unacknowledged messages never came back after the failover")
    attempts = sorted({a for a, _ in back.values()})
    check(attempts == [2], f"redeliveries after the failover had attempts {attempts}, expected [2]")
    early = [t for _, t in back.values() if t < received_at + invisible - 1.5]
    check(not early, "a message came back before its invisible duration ended")
    return {"messages": len(ids), "acked_before_kill": len(acked), "redelivered": len(back),
            "kill_after_receive_s": round(killed_at - received_at, 2),
            "first_redelivery_after_receive_s": round(min(t for _, t in back.values()) - received_at, 2),
            "errors": errors[:5]}


def fifo_failover(endpoint, topic):
    """FIFO through a master kill: three message groups of 30 messages each, received by the FIFO
    consumer group g-fifo in small batches and acknowledged; the master is killed mid-stream.
    Per message group, the first deliveries come in send order with nothing skipped; a batch
    whose acknowledgement was lost may come again whole, never a message ahead of an earlier
    one left unacknowledged."""
    producer = Producer(config(endpoint), (topic,))
    producer.startup()
    groups = ["ga", "gb", "gc"]
    for i in range(30):
        for g in groups:
            m = message(topic, f"{g}-{i}".encode())
            m.message_group = g
            producer.send(m)
    producer.shutdown()
    consumer = SimpleConsumer(config(endpoint), "g-fifo", {topic: FilterExpression("*")}, await_duration=2)
    consumer.startup()
    delivered = {g: [] for g in groups}
    errors = []
    announced = False
    killed = [None]
    end = time.time() + 90
    total = 30 * len(groups)
    while time.time() < end and sum(len(set(v)) for v in delivered.values()) < total:
        try:
            batch = consumer.receive(4, 5)
        except Exception as e:  # a consumer loop rides over the election: it retries
            errors.append(f"{type(e).__name__}: {e}")
            time.sleep(0.2)
            continue
        for m in batch:
            g, i = m.body.decode().split("-")
            check(m.message_group == g, f"message {m.body} has message group {m.message_group}")
            delivered[g].append(int(i))
        for m in batch:
            try:
                consumer.ack(m)
            except Exception as e:  # an ack lost in the failover: the batch comes again
                errors.append(f"ack: {type(e).__name__}: {e}")
        if not announced and sum(len(v) for v in delivered.values()) >= 20:
            print("RECEIVED", flush=True)
            announced = True
            killed[0] = wait_for_kill()
    consumer.shutdown()
    check(killed[0] is not None, "the test never killed the master")
    redelivered = 0
    for g, seq in delivered.items():
        first = []
        for i in seq:
            if i not in first:
                check(i == len(first), f"group {g}: {i} delivered before {len(first)} ({seq})")
                first.append(i)
            else:
                redelivered += 1
        check(len(first) == 30, f"group {g}: {len(first)} of 30 delivered")
    return {"messages": total, "redelivered": redelivered, "errors": errors[:5]}


def delay(endpoint, topic):
    """A DELAY message arrives no earlier than its delivery timestamp and within 1 s after it; a
    recalled one never arrives; recalling again is refused."""
    producer = Producer(config(endpoint), (topic,))
    producer.startup()
    consumer = SimpleConsumer(config(endpoint), "g-delay", {topic: FilterExpression("*")}, await_duration=2)
    consumer.startup()
    due_ms = int(time.time() * 1000) + 3000
    kept = message(topic, b"kept")
    kept.delivery_timestamp = due_ms
    kept_receipt = producer.send(kept)
    gone = message(topic, b"recalled")
    gone.delivery_timestamp = due_ms
    gone_receipt = producer.send(gone)
    check(bool(gone_receipt.recall_handle), "a DELAY send returns a recall handle")
    recalled_id = producer.recall_message(topic, gone_receipt.recall_handle)
    check(bool(recalled_id), "recall answers the message id")
    # raftmq answers MESSAGE_NOT_FOUND, which this client returns as no message id at all
    # (it reads that code as "nothing", not as an error).
    again = producer.recall_message(topic, gone_receipt.recall_handle)
    check(not again, f"a second recall of the same message recalled {again!r}")
    arrivals = []
    end = due_ms / 1000 + 8
    while time.time() < end:
        for m in consumer.receive(8, 20):
            arrivals.append((int(time.time() * 1000), m))
            consumer.ack(m)
    producer.shutdown()
    consumer.shutdown()
    bodies = [m.body for _, m in arrivals]
    check(bodies == [b"kept"], f"only the kept message arrives, once: {bodies}")
    at, m = arrivals[0]
    check(m.message_id == kept_receipt.message_id, "it keeps its message id")
    check(at >= due_ms, f"received {due_ms - at} ms before its time")
    check(at - due_ms <= 1000, f"received {at - due_ms} ms after its time")
    check(m.delivery_timestamp == due_ms, f"it says when it was due: {m.delivery_timestamp}")
    return {"late_ms": at - due_ms}


def sql(endpoint, topic):
    """A SQL92 subscription gets exactly the messages its condition holds for, a message whose
    property is not a number is skipped without stalling the queue, and a bad expression is
    refused with ILLEGAL_FILTER_EXPRESSION."""
    producer = Producer(config(endpoint), (topic,))
    producer.startup()
    sent = {}
    for i in range(30):
        color = "red" if i % 3 == 0 else "blue"
        # Every seventh message has an `n` that is not a number.
        n = "abc" if i % 7 == 3 else str(i)
        receipt = producer.send(message(topic, f"m{i}".encode(), "T1" if i < 15 else "T2", None,
                                        {"n": n, "color": color}))
        sent[receipt.message_id] = (n, color, "T1" if i < 15 else "T2")
    producer.shutdown()

    condition = "(n BETWEEN 5 AND 25 AND color = 'red') OR (TAGS = 'T2' AND n IN (16, 17))"

    def wanted(n, color, tag):
        if not n.isdigit():
            return False
        v = int(n)
        return (5 <= v <= 25 and color == "red") or (tag == "T2" and v in (16, 17))

    want = {mid for mid, props in sent.items() if wanted(*props)}
    check(want, "the test sends messages the condition holds for")
    consumer = SimpleConsumer(config(endpoint), "g-sql", {topic: FilterExpression(condition, FilterType.SQL)},
                              await_duration=3)
    consumer.startup()
    got = receive_until(consumer, lambda r: {m.message_id for m in r} >= want, 30)
    ids = [m.message_id for m in got]
    check(set(ids) == want, f"SQL delivered {sorted(sent[i] for i in ids)}, expected {sorted(sent[i] for i in want)}")
    check(len(ids) == len(set(ids)), "an acknowledged message was delivered twice")
    # Nothing else comes: filtered-out messages were passed over, not left to come later.
    late = receive_until(consumer, lambda r: False, 4)
    check(not late, f"{len(late)} more messages after the matching ones")
    consumer.shutdown()

    bad = SimpleConsumer(config(endpoint), "g-sql-bad", {topic: FilterExpression("n >", FilterType.SQL)},
                         await_duration=1)
    bad.startup()
    try:
        bad.receive(32, 20)
        fail("a receive with a malformed SQL expression succeeded")
    except ClientException as e:
        check(e.code == Code.ILLEGAL_FILTER_EXPRESSION, f"a malformed SQL expression answered {e.code}: {e}")
        check("column" in str(e), f"the error names the position: {e}")
    bad.shutdown()
    return {"sent": len(sent), "matched": len(want)}


class BodyChecker(TransactionChecker):
    """Answers checks by the body: orphan-commit commits, orphan-rollback rolls back."""

    def __init__(self):
        self.asked = []

    def check(self, message):
        self.asked.append(message.body)
        if message.body == b"orphan-commit":
            return TransactionResolution.COMMIT
        return TransactionResolution.ROLLBACK


def transaction(endpoint, topic):
    """A committed transaction is delivered once, a rolled-back one never; two left open are
    checked with the producer's TransactionChecker and end as it says. Run against brokers whose
    transaction-check-after-ms is short."""
    checker = BodyChecker()
    producer = Producer(config(endpoint), (topic,), checker)
    producer.startup()
    ids = {}
    for body, end in [(b"committed", "commit"), (b"rolled-back", "rollback"), (b"orphan-commit", None),
                      (b"orphan-rollback", None)]:
        t = producer.begin_transaction()
        receipt = producer.send(message(topic, body), t)
        check(bool(receipt.transaction_id), f"a transactional send returns a transaction id: {receipt}")
        ids[body] = receipt.message_id
        if end == "commit":
            t.commit()
        elif end == "rollback":
            t.rollback()
    consumer = SimpleConsumer(config(endpoint), "g-tx", {topic: FilterExpression("*")}, await_duration=2)
    consumer.startup()
    want = {b"committed", b"orphan-commit"}
    got = receive_until(consumer, lambda r: {m.body for m in r} >= want, 40)
    # Nothing else comes: the rolled-back ones never.
    got += receive_until(consumer, lambda r: False, 4)
    consumer.shutdown()
    producer.shutdown()
    bodies = sorted(m.body for m in got)
    check(bodies == sorted(want), f"received {bodies}, expected {sorted(want)}")
    for m in got:
        check(m.message_id == ids[m.body], f"{m.body} keeps its message id")
    check(sorted(set(checker.asked)) == [b"orphan-commit", b"orphan-rollback"],
          f"the checker was asked about the two open transactions only: {checker.asked}")
    return {"received": len(got), "checks": len(checker.asked)}


def secured(endpoint, topic, group):
    """On a cluster with auth on: the user of the environment sends and receives; a wrong
    secret key is refused, and so is a consumer group the user has no rights for. With
    RAFTMQ_TLS=1 every connection is TLS (grpc reads the CA from GRPC_DEFAULT_SSL_ROOTS_FILE_PATH)."""
    tls = os.environ.get("RAFTMQ_TLS") == "1"
    producer = Producer(config(endpoint), (topic,), tls_enable=tls)
    producer.startup()
    sent = {}
    for i in range(5):
        receipt = producer.send(message(topic, f"secured {i}".encode()))
        sent[receipt.message_id] = f"secured {i}".encode()
    producer.shutdown()
    consumer = SimpleConsumer(config(endpoint), group, {topic: FilterExpression("*")}, await_duration=3,
                              tls_enable=tls)
    consumer.startup()
    got = receive_until(consumer, lambda r: {m.message_id for m in r} >= set(sent), 30)
    check({m.message_id: m.body for m in got} == sent, f"received {[m.body for m in got]}")
    consumer.shutdown()

    refusals = {}
    good = credentials()
    wrong = Credentials(good.ak, good.sk + "x")
    try:
        bad = Producer(config(endpoint, wrong), (topic,), tls_enable=tls)
        bad.startup()
        bad.send(message(topic, b"never stored"))
        fail("a producer with a wrong secret key sent a message")
    except Exception as e:
        check(type(e).__name__ == "UnauthorizedException" and "UNAUTHENTICATED" in str(e), f"wrong key: {e!r}")
        refusals["wrong_key"] = str(e)[:200]
    try:
        other = SimpleConsumer(config(endpoint), "not-my-group", {topic: FilterExpression("*")}, await_duration=1,
                               tls_enable=tls)
        other.startup()
        other.receive(1, 10)
        fail("a consumer received for a group it has no rights for")
    except Exception as e:
        check(type(e).__name__ == "ForbiddenException" and "not-my-group" in str(e), f"foreign group: {e!r}")
        refusals["foreign_group"] = str(e)[:200]
    return {"received": len(got), "refusals": refusals, "tls": tls}


def main():
    mode, endpoint, topic = sys.argv[1], sys.argv[2], sys.argv[3]
    if mode == "secured":
        print("RESULT " + json.dumps(secured(endpoint, topic, sys.argv[4])), flush=True)
        os._exit(0)
    if mode == "basics":
        result = basics(endpoint, topic)
    elif mode == "push":
        result = push(endpoint, topic)
    elif mode == "dead-letter":
        result = dead_letter(endpoint, topic, int(sys.argv[4]))
    elif mode == "delay":
        result = delay(endpoint, topic)
    elif mode == "sql":
        result = sql(endpoint, topic)
    elif mode == "transaction":
        result = transaction(endpoint, topic)
    elif mode == "fifo-failover":
        result = fifo_failover(endpoint, topic)
    elif mode == "pop-failover":
        result = pop_failover(endpoint, topic)
    elif mode == "failover":
        result = failover(endpoint, topic, float(sys.argv[4]))
    else:
        fail(f"unknown mode {mode}")
    print("RESULT " + json.dumps(result), flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()
