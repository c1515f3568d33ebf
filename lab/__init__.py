"""The lab: the demo model's training and evaluations, outside the product (``python -m lab``)."""
