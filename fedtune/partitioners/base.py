"""What the partitioners share."""

LABEL = "label"
"""The training pool's label column (`fedtune.data.LABEL`), for the label-skewed kinds."""
