"""The BOINC runtime API in pure Python (client 7.x, API version 7.20.0).

Facts: ``../shared/boinc_protocol.md``. No C extension: we map the slot's
``boinc_mmap_file`` ourselves, so the wrapper runs wherever Python does.
"""

#: The API version we implement; app versions must declare it (``<api_version>``)
#: or the client gives the app no shared memory.
API_VERSION = "7.20.0"
