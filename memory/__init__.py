"""Four-tier memory (L1 raw, L2 encrypted, L3 facts, L4 notes), envelope encryption, embeddings."""
