"""vmwrapper: the BOINC application that runs a job inside a virtual machine.

The BOINC client starts ``vmwrapper`` as the app version's main program. It
speaks the BOINC runtime API (:mod:`vmwrapper.boinc`, pure Python), drives a
hypervisor (:mod:`vmwrapper.hypervisor`) and hands the job to the agent in the
guest through :mod:`vmcontroller`.
"""

__version__ = "0.1.0"
