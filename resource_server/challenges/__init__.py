"""Payment challenges: one per 402, matched against the payment that answers it."""
