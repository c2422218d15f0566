"""Slow, obviously-correct reference implementations that tests compare the product against."""
