"""``make demo``: the whole chain on this machine, with progress and a short summary.

``python -m vmwrapper.demo`` builds (or reuses) the appliance and the
standalone executable, deploys them as an anonymous-platform app version,
runs a real BOINC client against the test project server, waits while the job
runs in the guest and its CPU-time trickles reach the project database, runs
``trickle_handler --one_pass`` and prints what the volunteer earned.

* :mod:`.workload`: the work unit's input and the output it must produce;
* :mod:`.steps`: the demo's steps, run in order, every process stopped on exit;
* :mod:`.summary`: the closing human summary;
* :mod:`.cli`: options, signals, exit statuses.
"""
