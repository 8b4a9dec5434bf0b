"""Backend kinds behind one interface (`base.Backend`), and the replica pool that routes between them."""
