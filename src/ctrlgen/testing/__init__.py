"""Test kit for ctrlgen and its plugins: tiny offline models, fixtures (a pytest plugin) and contract tests."""
