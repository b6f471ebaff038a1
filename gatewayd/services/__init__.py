"""The asyncio runtimes that carry decisions out on the devices and the store."""
