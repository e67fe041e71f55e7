"""A fake ``VBoxManage`` (executable ``VBoxManage`` + ``fake_vboxmanage.py``) with real on-disk state."""

from pathlib import Path

#: Directory holding the executable; put it first on PATH or pass it to the driver.
FAKE_VBOXMANAGE_DIR = Path(__file__).resolve().parent
#: The executable itself.
FAKE_VBOXMANAGE = FAKE_VBOXMANAGE_DIR / "VBoxManage"
