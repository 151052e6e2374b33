"""roadmap: crowdsourced GPS + aerial imagery to reviewable vector roads."""

__version__ = "0.1.0"
