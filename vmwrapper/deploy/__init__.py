"""Ship ``vmwrapper`` to volunteers: the standalone executable and the BOINC app version.

- :mod:`.executable` builds ``vmwrapper`` into one file with PyInstaller
  (volunteers have neither Python nor Twisted), rebuilding only when the
  sources change;
- :mod:`.spec` checks what an admin asks for (app name, ``X.YY`` version,
  platform, plan class) before anything is written;
- :mod:`.manifest` writes ``version.xml`` (read by BOINC's
  ``tools/update_versions``), the anonymous-platform ``app_info.xml`` and the
  ``config.xml`` ``<daemon>`` entry of ``trickle_handler``;
- :mod:`.builder` assembles the app version directory in a temporary
  directory and renames it into place, so a refused or failed build leaves
  nothing behind; :mod:`.cli` is ``vmwrapper deploy``.
"""
