"""Reading, splitting and fingerprinting labelled data."""
