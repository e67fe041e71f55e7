"""What admins and volunteers learn when something goes wrong.

* :mod:`.findings`: reason codes, findings and the decision (proceed, proceed
  at a cost, temporary exit);
* :mod:`.host`: the pre-boot host checks (virtualization, hypervisor, disk, memory);
* :mod:`.summary`: the final summary lines of ``stderr.txt``;
* :mod:`.console`: the guest console's tail kept in ``stderr.txt`` for failed tasks.
"""
