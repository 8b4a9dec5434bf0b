"""The request's life: inference.py reads top to bottom as what happens to one inference request; the
other modules here are its steps that belong to no lower layer (relay, capture, shadow), feedback's own
short path, and the review queue that hands captured answers to the people who judge them."""
