"""The vmwrapper BOINC application: one VM job from start to finish.

Modules, one job each:

* :mod:`.machine`: the main loop as a state machine (clock, driver, guest
  channel and BOINC runtime injected), including client control;
* :mod:`.guestlink`: the real guest channel (embedded or external broker plus
  the host controller);
* :mod:`.state`: the checkpoint state file, written atomically;
* :mod:`.trickles`: CPU-time trickle-ups;
* :mod:`.cpu`: the VM's CPU time, polled and accumulated;
* :mod:`.output`: guest output streamed into ``stderr.txt``, size-capped;
* :mod:`.outcome`: how the run ends, and errors mapped onto BOINC outcomes;
* :mod:`.slot`: file names in the slot and their cleanup;
* :mod:`.guestfiles`: vboxwrapper's guest-written trigger, heartbeat and trickle files;
* :mod:`.driveroptions`: hypervisor driver options (QEMU's KVM probe files and cache);
* :mod:`.lazystatus`: the status page, built on the first visit.

``vmwrapper.app`` builds the real pieces and runs the machine in the reactor.
"""
