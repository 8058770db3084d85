#!/usr/bin/env python3
"""IoT device management over Prism's Multicast Registry (RFC-018 POC-4's demo).

    iot.py device sensor-1 --metadata '{"type": "sensor", "floor": 1}' [--ttl 10]
    iot.py list [--filter '{"type": "sensor"}']
    iot.py send --filter '{"type": "sensor", "floor": 1}' '{"command": "read"}'

A *device* registers itself with metadata and a TTL, heartbeats to stay
registered, and prints every command multicast to it until Ctrl-C or
SIGTERM (which unregister it). `list` enumerates the devices a filter matches; `send`
multicasts a JSON command to them and prints how many received it. Every
command takes `--address` (default localhost:8980) and `--namespace`
(default `devices`, the registry namespace `prism dev` serves).

`--demo` runs a short scenario in one process instead: three devices (each on
its own connection) and a controller that enumerates them, multicasts
commands by filter and watches a device that stops heartbeating expire. It
checks every step and exits 0 (1 if something does not happen in time).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

try:
    from prism_client import Identity, Inbox, PrismClient, PrismError
except ImportError:  # run from a checkout without `pip install ./clients/python`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "clients" / "python"))
    from prism_client import Identity, Inbox, PrismClient, PrismError

DEMO_TTL = 2.0  # seconds; short, so the demo sees a device expire
DEMO_TIMEOUT = 5.0  # how long the demo waits for any one thing


def json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON: {err}") from None


def describe(identity: Identity) -> str:
    if identity.expires_at is None:
        expiry = "no expiry"
    else:
        left = (identity.expires_at - datetime.now(timezone.utc)).total_seconds()
        expiry = f"expires in {max(left, 0):.1f} s"
    return f"{identity.identity}  {json.dumps(identity.metadata, sort_keys=True)}  ({expiry})"


# -- the commands -------------------------------------------------------------------


async def run_device(args: argparse.Namespace) -> int:
    # SIGTERM (a service manager stopping the device) leaves like Ctrl-C does.
    main_task = asyncio.current_task()
    assert main_task is not None
    with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    async with PrismClient(args.address, namespace=args.namespace) as client:
        reg = client.registry
        await reg.register(args.name, args.metadata, ttl=args.ttl)
        inbox = reg.listen(args.name)
        await inbox.ready()
        print(f"{args.name} registered (ttl {args.ttl} s); waiting for commands (Ctrl-C leaves)", flush=True)

        async def heartbeat() -> None:
            while True:
                await asyncio.sleep(args.ttl / 3)
                await reg.heartbeat(args.name)

        beating = asyncio.create_task(heartbeat())
        try:
            async for message in inbox:
                print(f"[{args.name}] received {message.payload.decode('utf-8', errors='replace')}", flush=True)
        except asyncio.CancelledError:
            pass  # Ctrl-C or SIGTERM
        finally:
            beating.cancel()
            await inbox.aclose()
            with contextlib.suppress(PrismError):
                await reg.unregister(args.name)
            print(f"{args.name} unregistered", flush=True)
    return 0


async def run_list(args: argparse.Namespace) -> int:
    async with PrismClient(args.address, namespace=args.namespace) as client:
        for identity in await client.registry.enumerate(args.filter):
            print(describe(identity))
    return 0


async def run_send(args: argparse.Namespace) -> int:
    async with PrismClient(args.address, namespace=args.namespace) as client:
        result = await client.registry.multicast(args.filter, args.command_json)
    print(f"{result.target_count} target(s), {result.delivered_count} delivered")
    for identity, reason in sorted(result.failed.items()):
        print(f"  {identity}: {reason}")
    return 0 if not result.failed else 1


# -- the demo ---------------------------------------------------------------------------


class DemoFailed(Exception):
    pass


class Device:
    """A simulated device with its own connection: registers, heartbeats,
    prints and records the commands it receives."""

    def __init__(self, name: str, metadata: dict[str, Any], fleet: str, address: str, namespace: str) -> None:
        self.name = name
        # Unique per demo run, so the demo never touches real devices.
        self.identity = f"{fleet}-{name}"
        self.metadata = {**metadata, "fleet": fleet}
        self.client = PrismClient(address, namespace=namespace)
        self.received: list[Any] = []
        self.arrived = asyncio.Condition()
        self.tasks: list[asyncio.Task[None]] = []  # heartbeat and listener
        self.online = False

    async def start(self) -> None:
        await self.client.registry.register(self.identity, self.metadata, ttl=DEMO_TTL)
        inbox = self.client.registry.listen(self.identity)
        # Another connection multicasts: wait until this inbox is live.
        await inbox.ready()
        self.tasks = [asyncio.create_task(self._heartbeat()), asyncio.create_task(self._listen(inbox))]
        self.online = True

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(DEMO_TTL / 4)
            await self.client.registry.heartbeat(self.identity)

    async def _listen(self, inbox: Inbox) -> None:
        async for message in inbox:
            print(f"[{self.name}] received {message.payload.decode()}", flush=True)
            async with self.arrived:
                self.received.append(message.json())
                self.arrived.notify_all()

    async def wait_for(self, count: int) -> None:
        """Waits until `count` commands have arrived."""
        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(lambda: len(self.received) >= count), DEMO_TIMEOUT)

    async def _halt(self) -> None:
        """Stops heartbeating and listening; raises if either had failed."""
        self.online = False
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for task in self.tasks:
            if not task.cancelled() and task.exception() is not None:
                raise DemoFailed(f"{self.name} failed: {task.exception()!r}")

    async def go_offline(self) -> None:
        """Stops heartbeating and listening without unregistering (a crash)."""
        await self._halt()
        print(f"[{self.name}] offline (no more heartbeats)", flush=True)

    async def stop(self) -> None:
        """Leaves the fleet: unregisters (if still online)."""
        if self.online:
            await self._halt()
            await self.client.registry.unregister(self.identity)


class Controller:
    def __init__(self, client: PrismClient, fleet: str) -> None:
        self.reg = client.registry
        self.fleet = fleet

    def _names(self, identities: list[Identity]) -> list[str]:
        return [i.identity.removeprefix(f"{self.fleet}-") for i in identities]

    async def enumerate(self, label: str, filter: dict[str, Any]) -> list[str]:
        names = self._names(await self.reg.enumerate({**filter, "fleet": self.fleet}))
        print(f"[controller] {label}: {', '.join(names) or '(none)'}", flush=True)
        return names

    async def multicast(self, filter: dict[str, Any], command: dict[str, Any]) -> tuple[int, int]:
        result = await self.reg.multicast({**filter, "fleet": self.fleet}, command)
        print(
            f"[controller] multicast {json.dumps(command, separators=(',', ':'))} to {json.dumps(filter)}: "
            f"{result.target_count} target(s), {result.delivered_count} delivered",
            flush=True,
        )
        if result.failed:
            raise DemoFailed(f"not delivered: {result.failed}")
        return result.target_count, result.delivered_count


def expect(what: str, got: Any, wanted: Any) -> None:
    if got != wanted:
        raise DemoFailed(f"{what}: expected {wanted!r}, got {got!r}")


async def demo_scenario(devices: dict[str, Device], controller: Controller) -> None:
    await asyncio.gather(*(d.start() for d in devices.values()))
    sensor_1, sensor_2, actuator_1 = devices["sensor-1"], devices["sensor-2"], devices["actuator-1"]

    expect("fleet", await controller.enumerate("fleet", {}), ["actuator-1", "sensor-1", "sensor-2"])
    expect("upstairs", await controller.enumerate("sensors on floor >= 2", {"type": "sensor", "floor.gte": 2}), ["sensor-2"])

    expect("read", await controller.multicast({"type": "sensor", "floor": 1}, {"command": "read"}), (1, 1))
    await sensor_1.wait_for(1)
    expect("open", await controller.multicast({"type": "actuator"}, {"command": "open", "valve": 3}), (1, 1))
    await actuator_1.wait_for(1)
    expect("calibrate", await controller.multicast({"type": "sensor"}, {"command": "calibrate"}), (2, 2))
    await asyncio.gather(sensor_1.wait_for(2), sensor_2.wait_for(1))

    # sensor-2 stops heartbeating: the registry drops it once its TTL is up.
    await sensor_2.go_offline()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEMO_TTL + DEMO_TIMEOUT
    while "sensor-2" in controller._names(await controller.reg.enumerate({"fleet": controller.fleet})):
        if loop.time() > deadline:
            raise DemoFailed("sensor-2 did not expire")
        await asyncio.sleep(0.1)
    print("[controller] sensor-2 expired", flush=True)
    expect("read again", await controller.multicast({"type": "sensor"}, {"command": "read"}), (1, 1))
    await sensor_1.wait_for(3)

    expect("sensor-1 commands", sensor_1.received, [{"command": "read"}, {"command": "calibrate"}, {"command": "read"}])
    expect("sensor-2 commands", sensor_2.received, [{"command": "calibrate"}])
    expect("actuator-1 commands", actuator_1.received, [{"command": "open", "valve": 3}])


async def demo(args: argparse.Namespace) -> int:
    fleet = f"demo{secrets.token_hex(3)}"
    fleet_spec = {
        "sensor-1": {"type": "sensor", "floor": 1, "location": {"building": "HQ"}},
        "sensor-2": {"type": "sensor", "floor": 2, "location": {"building": "HQ"}},
        "actuator-1": {"type": "actuator", "floor": 1, "location": {"building": "HQ"}},
    }
    devices = {name: Device(name, md, fleet, args.address, args.namespace) for name, md in fleet_spec.items()}
    async with PrismClient(args.address, namespace=args.namespace) as client:
        try:
            await demo_scenario(devices, Controller(client, fleet))
            await asyncio.gather(*(d.stop() for d in devices.values()))
        except (PrismError, DemoFailed) as err:
            print(f"iot demo failed: {err}", file=sys.stderr)
            return 1
        except asyncio.TimeoutError:
            print(f"iot demo failed: a command did not arrive within {DEMO_TIMEOUT} s", file=sys.stderr)
            return 1
        finally:
            for device in devices.values():
                await device.client.close()
    print("demo: done", flush=True)
    return 0


# -- the command line ---------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description="IoT devices over Prism's Multicast Registry.")
    parser.add_argument("--address", default="localhost:8980", help="Prism's address")
    parser.add_argument("--namespace", default="devices", help="a Multicast Registry namespace")
    parser.add_argument("--demo", action="store_true", help="run the self-checking demo scenario, then exit")
    commands = parser.add_subparsers(dest="command")
    device = commands.add_parser("device", help="run one device: register, heartbeat, print commands")
    device.add_argument("name", help="the device's identity")
    device.add_argument("--metadata", type=json_arg, default={}, help="a JSON object, e.g. '{\"type\": \"sensor\"}'")
    device.add_argument("--ttl", type=float, default=10.0, help="seconds without a heartbeat before it expires")
    listing = commands.add_parser("list", help="list the devices a filter matches")
    listing.add_argument("--filter", type=json_arg, default=None, help="a JSON filter (default: every device)")
    send = commands.add_parser("send", help="multicast a JSON command to the devices a filter matches")
    send.add_argument("command_json", metavar="COMMAND", type=json_arg, help="a JSON command")
    send.add_argument("--filter", type=json_arg, default=None, help="a JSON filter (default: every device)")
    args = parser.parse_args()
    if args.demo:
        return asyncio.run(demo(args))
    if args.command is None:
        parser.error("choose a command (device, list, send) or --demo")
    runner = {"device": run_device, "list": run_list, "send": run_send}[args.command]
    try:
        return asyncio.run(runner(args))
    except KeyboardInterrupt:
        return 130
    except PrismError as err:
        print(f"iot: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
