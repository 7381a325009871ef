"""Unit tests of the server: controller, store, source."""
