"""The e2e suite runs against a real API server provisioned by the harness plugin."""

pytest_plugins = ["pet_harness.pytest_plugin", "pet_harness.fuzz.plugin"]
