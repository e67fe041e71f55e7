"""Fake programs for tests (stand-ins for hypervisor CLIs that cannot run here)."""
