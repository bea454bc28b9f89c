"""Provisioning and checking the MQTT broker (Mosquitto 2 with the dynamic-security plugin): `greenmine broker`."""
