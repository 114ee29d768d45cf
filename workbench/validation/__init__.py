"""Checks against deployed models: smoke tests."""
