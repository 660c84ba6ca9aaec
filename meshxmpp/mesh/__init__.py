"""The mesh: membership (SWIM), the replicated directory, forwarding and the node-to-node transport."""
