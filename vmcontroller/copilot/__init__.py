"""Co-Pilot: physicists submit jobs; pilot agents in volunteers' VMs pull and run them.

The pieces, one job per module:

* :mod:`.spec`      what a job is (command, inputs, output patterns, needs,
                    limits) and what an agent can run; validation of both.
* :mod:`.lease`     the job state machine and its leases, as pure functions
                    of a record and the current time.
* :mod:`.store`     the durable store (SQLite by default, MariaDB at scale).
* :mod:`.storage`   per-job input and output directories on the server,
                    with size limits and sha256 checks.
* :mod:`.messages`  the JSON messages between pilots and the manager.
* :mod:`.manager`   the job manager: store + leases + storage + clock.
* :mod:`.dispatch`  the manager's broker side (request -> offer -> accept).
* :mod:`.http_api`  the manager's HTTP side (physicists' API, agents' uploads).
* :mod:`.pilot`     the agent side: pilot mode of a guest.
* :mod:`.client`    the physicists' HTTP client; :mod:`.cli` the ``copilot`` command.
"""
