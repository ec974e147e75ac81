"""Double-entry ledger of every inference, settlement, disputes and slashing."""
