"""Operations on an output: verify, status, estimate (`semtok plan`)."""
