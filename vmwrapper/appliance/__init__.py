"""The boinc-vm appliance: a small bootable Debian disk that behaves like CernVM.

``builder`` makes the disk (``vmwrapper appliance build``), ``userdata`` writes
the contextualization disk each VM gets, ``guest/`` holds the scripts that run
inside it (the initramfs ``init`` and the appliance's PID 1).
"""
