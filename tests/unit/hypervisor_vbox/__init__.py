"""Unit tests of the VirtualBox driver and its fake VBoxManage (fast: no VM waits)."""
