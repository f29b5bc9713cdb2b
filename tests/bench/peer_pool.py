#!/usr/bin/python3
"""peer_pool: the Python pool `make bench` holds drover's Kafka backend against (issue 7).

What a new user would write in a hundred lines: multiprocessing, one
confluent_kafka consumer per process, all in one group; K threads per process,
each job `subprocess.run(['/bin/cat'])` with the message on stdin, the result
produced to the complete topic, then an asynchronous commit of that message.
It is the reference, not a model: it commits per job and out of order, which
drover does not do.

  peer_pool.py --bootstrap HOST:PORT --topic REQ --complete COMPLETE --group G
               [--processes P] [--threads K] [--fetch-wait-ms MS] [--handler PATH]

Each process prints "assigned PID N" (N partitions it holds) on every
assignment change, so the caller knows when the group is complete. SIGTERM
stops every process: no new job, running ones finish, the producer is
flushed, the consumer closed. The parent reaps its children, so its rusage
covers the whole tree.
"""
import argparse
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from confluent_kafka import Consumer, KafkaException, Producer


def parse_args(argv):
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--complete", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--threads", type=int, default=4)
    p.add_argument("--fetch-wait-ms", type=int, default=5)
    p.add_argument("--handler", default="/bin/cat")
    return p.parse_args(argv)


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_job(args, consumer, producer, msg, slots):
    try:
        r = subprocess.run([args.handler], input=msg.value(), stdout=subprocess.PIPE, check=False)
        doc = {"id": (msg.key() or b"").decode(errors="replace"), "exit_code": r.returncode,
               "result": r.stdout.decode(errors="replace")}
        producer.produce(args.complete, key=msg.key(), value=json.dumps(doc).encode())
        producer.poll(0)
        consumer.commit(message=msg, asynchronous=True)
    except (KafkaException, BufferError, OSError) as e:
        say("error %d %s" % (os.getpid(), e))
    finally:
        slots.release()


def member(args):
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group,
                         "enable.auto.commit": False, "auto.offset.reset": "earliest",
                         "fetch.wait.max.ms": args.fetch_wait_ms, "session.timeout.ms": 6000,
                         "heartbeat.interval.ms": 500})
    producer = Producer({"bootstrap.servers": args.bootstrap, "linger.ms": 5})
    held = set()

    def on_assign(_consumer, partitions):
        held.update(p.partition for p in partitions)
        say("assigned %d %d" % (os.getpid(), len(held)))

    def on_revoke(_consumer, partitions):
        held.difference_update(p.partition for p in partitions)
        say("assigned %d %d" % (os.getpid(), len(held)))

    consumer.subscribe([args.topic], on_assign=on_assign, on_revoke=on_revoke)
    slots = threading.BoundedSemaphore(args.threads)
    with ThreadPoolExecutor(max_workers=args.threads) as pool:
        while not stop.is_set():
            if not slots.acquire(timeout=0.1):
                continue
            msg = consumer.poll(0.1)
            if msg is None or msg.error():
                slots.release()
                producer.poll(0)
                continue
            pool.submit(run_job, args, consumer, producer, msg, slots)
    producer.flush(10)
    consumer.close()


def main(argv):
    args = parse_args(argv)
    # The parent only waits: TERM is passed on to the members, which drain and exit.
    children = [multiprocessing.Process(target=member, args=(args,)) for _ in range(args.processes)]
    for c in children:
        c.start()
    signal.signal(signal.SIGTERM, lambda *_: [os.kill(c.pid, signal.SIGTERM) for c in children if c.is_alive()])
    for c in children:
        c.join()
    return 0 if all(c.exitcode == 0 for c in children) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
