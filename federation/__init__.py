"""Pool identity, peers, gossip, Merkle anti-entropy and cross-pool forwarding."""
