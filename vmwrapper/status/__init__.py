"""The status page volunteers open from BOINC Manager ("Show graphics").

* :mod:`.model`: the snapshot the page shows, and the guest output tail;
* :mod:`.secrets`: masks passcodes and account keys in every shown text;
* :mod:`.page`: the HTML, stylesheet and script (live through Server-Sent Events);
* :mod:`.server`: twisted.web on 127.0.0.1 only, polling a snapshot provider;
* :mod:`.vmwatch`: the VM's state and CPU time read from a hypervisor driver;
* :mod:`.wrapper_view`: the running wrapper as a snapshot provider, and the
  wiring (:func:`~.wrapper_view.start_status_page`).
"""
