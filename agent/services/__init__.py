"""Capabilities served behind consent: one module per side, wiring the capability modules."""
