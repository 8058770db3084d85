#!/usr/bin/env python3
"""A terminal chat room over Prism PubSub (RFC-018 POC-3's demo).

    chat.py --room lobby --user alice [--address localhost:8980] [--namespace default]

Every line typed on stdin is published to the room's topic (`chat.<room>`)
with metadata `user=<name>`; every message of other users in the room is
printed as `<user> text`. Ctrl-D (end of input) leaves the room.

`--demo` runs two simulated users (alice and bob) in one process instead: they
exchange a few messages through the server, each prints what it receives, and
the program exits 0 (1 if a message does not arrive in time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import stat
import sys
from pathlib import Path

try:
    from prism_client import InvalidArgumentError, Message, PrismClient, PrismError, Subscription
except ImportError:  # run from a checkout without `pip install ./clients/python`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python"))
    from prism_client import InvalidArgumentError, Message, PrismClient, PrismError, Subscription

DEMO_SCRIPT = [
    ("alice", "hi bob!"),
    ("bob", "hello alice"),
    ("alice", "how is the weather?"),
    ("bob", "sunny, with a chance of messages"),
    ("alice", "bye"),
]
DEMO_TIMEOUT = 5.0


def room_topic(room: str) -> str:
    return f"chat.{room}"


def render(message: Message) -> str:
    user = message.metadata.get("user", "?")
    text = message.payload.decode("utf-8", errors="replace")
    if message.metadata.get("kind") == "join":
        return f"* {user} joined"
    if message.metadata.get("kind") == "leave":
        return f"* {user} left"
    return f"<{user}> {text}"


async def print_others(sub: Subscription, me: str) -> None:
    """Prints every message of the room not sent by `me`, until the subscription ends."""
    async for message in sub:
        if message.metadata.get("user") != me:
            print(render(message), flush=True)


async def stdin_lines() -> asyncio.StreamReader | None:
    """An asyncio reader of stdin when it is a pipe or terminal; None otherwise
    (a regular file), in which case the caller reads it in a thread."""
    mode = os.fstat(sys.stdin.fileno()).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)):
        return None
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def chat(args: argparse.Namespace) -> int:
    topic = room_topic(args.room)
    async with PrismClient(args.address, namespace=args.namespace) as client:
        sub = client.pubsub.subscribe(topic)
        try:
            await sub.ready()
        except PrismError as err:
            print(f"chat: cannot join room {args.room!r}: {err}", file=sys.stderr)
            return 1
        print(f"joined #{args.room} as {args.user} (Ctrl-D leaves)", file=sys.stderr, flush=True)
        printer = asyncio.create_task(print_others(sub, args.user))
        await client.pubsub.publish(topic, b"", metadata={"user": args.user, "kind": "join"})
        reader = await stdin_lines()
        try:
            while True:
                if reader is not None:
                    raw = await reader.readline()
                    line = raw.decode("utf-8", errors="replace")
                else:
                    line = await asyncio.to_thread(sys.stdin.readline)
                if not line:
                    break  # end of input
                text = line.rstrip("\r\n")
                if not text:
                    continue
                if printer.done():
                    break  # the subscription ended (server gone?)
                try:
                    await client.pubsub.publish(topic, text.encode(), metadata={"user": args.user})
                except InvalidArgumentError as err:
                    print(f"chat: not sent: {err}", file=sys.stderr, flush=True)
            with contextlib.suppress(PrismError):
                await client.pubsub.publish(topic, b"", metadata={"user": args.user, "kind": "leave"})
        finally:
            await sub.aclose()
            error = await asyncio.gather(printer, return_exceptions=True)
        if isinstance(error[0], PrismError):
            print(f"chat: the room closed: {error[0]}", file=sys.stderr)
            return 1
    return 0


class DemoUser:
    """A simulated user with its own connection: says lines, prints what it hears."""

    def __init__(self, name: str, client: PrismClient, topic: str) -> None:
        self.name = name
        self.client = client
        self.topic = topic
        self.sub = client.pubsub.subscribe(topic)

    async def say(self, text: str) -> None:
        await self.client.pubsub.publish(self.topic, text.encode(), metadata={"user": self.name})

    async def hear(self) -> str:
        """The next message of somebody else, printed as `[me] <them> text`."""
        while True:
            message = await anext(self.sub)
            if message.metadata.get("user") != self.name:
                line = f"[{self.name}] {render(message)}"
                print(line, flush=True)
                return line


async def demo(args: argparse.Namespace) -> int:
    topic = room_topic(args.room)
    async with (
        PrismClient(args.address, namespace=args.namespace) as alice_conn,
        PrismClient(args.address, namespace=args.namespace) as bob_conn,
    ):
        users = {"alice": DemoUser("alice", alice_conn, topic), "bob": DemoUser("bob", bob_conn, topic)}
        try:
            # Separate connections: wait until both are live before talking.
            await asyncio.gather(*(u.sub.ready() for u in users.values()))
            for speaker, text in DEMO_SCRIPT:
                listener = users["bob" if speaker == "alice" else "alice"]
                await users[speaker].say(text)
                await asyncio.wait_for(listener.hear(), DEMO_TIMEOUT)
        except (PrismError, StopAsyncIteration) as err:
            print(f"chat demo failed: {err!r}", file=sys.stderr)
            return 1
        except asyncio.TimeoutError:
            print(f"chat demo failed: a message did not arrive within {DEMO_TIMEOUT} s", file=sys.stderr)
            return 1
    print("demo: done", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description="Chat over Prism PubSub.")
    parser.add_argument("--room", default="lobby", help="room name (topic chat.<room>)")
    parser.add_argument("--user", help="your name (required unless --demo)")
    parser.add_argument("--address", default="localhost:8980", help="Prism's address")
    parser.add_argument("--namespace", default="default", help="a PubSub namespace")
    parser.add_argument("--demo", action="store_true", help="two simulated users exchange messages, then exit")
    args = parser.parse_args()
    if args.demo:
        return asyncio.run(demo(args))
    if not args.user:
        parser.error("--user is required (or use --demo)")
    try:
        return asyncio.run(chat(args))
    except KeyboardInterrupt:
        return 130
    except PrismError as err:
        print(f"chat: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
