"""anyattn doctor: read the machine, predict install failures, explain logs, plan installs.

Nothing heavy is imported here: ``import anyattn`` must stay fast. The submodules
import torch / rich lazily, inside the functions that need them.
"""

__all__ = ["facts", "probes", "checks", "checks_stack", "stack", "signatures", "explain", "plan", "report", "cli",
           "bundle", "recent"]
