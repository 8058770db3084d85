"""RFC-018's POC-4 validation test, as written there, except that the client
connects to the fixture's server (whose `default` namespace is a Multicast
Registry) instead of a fixed localhost:8980, and is closed at the end."""

from prism_client import PrismClient


async def test_filtered_multicast(registry_addr: str) -> None:
    client = PrismClient(registry_addr)

    # Register devices
    await client.registry.register("sensor-1", {"type": "sensor", "floor": 1})
    await client.registry.register("sensor-2", {"type": "sensor", "floor": 2})
    await client.registry.register("actuator-1", {"type": "actuator", "floor": 1})

    # Multicast to floor 1 sensors only
    result = await client.registry.multicast(
        filter={"type": "sensor", "floor": 1},
        message={"command": "read"}
    )

    assert result.target_count == 1  # Only sensor-1
    assert result.delivered_count == 1
    await client.close()
