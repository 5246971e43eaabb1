"""End-to-end and unit tests of the Dash app (dash_app)."""
