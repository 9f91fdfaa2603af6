"""simulations: deterministic many-node simulator and scenarios (no trio, libp2p, prsm_node)."""
