"""Built-in analyses, one module each; every public ``Analysis`` subclass here is registered."""
