"""Drive a real BOINC client against a tiny BOINC project, for tests and the demo.

``project_server`` is a one-process BOINC project (master page, scheduler,
download and upload handlers) on 127.0.0.1; ``client`` runs one real ``boinc``
client in a private data dir on the anonymous platform and cleans up every
process it started. Facts: ``/work/shared/boinc_protocol.md`` sections 9-10.
"""
