"""Analysis core: pure functions on (model, inputs, cache) and the token-intervention library."""
