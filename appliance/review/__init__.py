"""Blind A/B review rounds: operators compare a new adapter with production in a browser."""
