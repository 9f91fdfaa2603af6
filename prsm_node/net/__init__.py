"""The libp2p side of the node: host, framed request/response, peers, ping, peer exchange."""
