"""The MQTT link to the campus center and the commands it brings."""
