"""The container runtime of the agent: runc bundles, overlay roots and CNI bridge networking."""
