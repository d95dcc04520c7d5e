"""AttentionService: numerical checks of self-attention."""
