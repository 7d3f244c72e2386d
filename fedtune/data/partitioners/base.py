"""What the partitioners share."""

LABEL = "label"
"""The training pool's label column (`fedtune.data.corpus.LABEL`), for the label-skewed kinds."""
