"""trickle_handler: a BOINC server daemon that grants credit for CPU-time trickles.

Facts and rules: ``../shared/credit_rules.md``.
"""

__version__ = "0.1.0"
