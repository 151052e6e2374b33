"""Mask -> skeleton -> road graph -> conflation, verification, OSM files and graph metrics. No torch here."""
