"""storage: pure core (no trio, no libp2p, no prsm_node imports)."""
