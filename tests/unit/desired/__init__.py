"""Unit tests of the desired state: loader, models, positions."""
