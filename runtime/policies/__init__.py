"""Runtime side of each policy family (one sub-package per ``policy_kind``)."""
