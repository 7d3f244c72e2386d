"""`fedtune audit`: attacks on a finished simulated run. Its limits are here (light to
import) for the command line's parser: a bigger value can only be a mistake."""

MAX_BATCH_SIZE = 256
"""Texts per attacked update: gradient matching holds batch x length x vocabulary floats
(256 x 128 x 30,522 for MiniLM: 4 GB, and as much again for each of their gradients)."""
MAX_BATCHES = 1_000
"""Attacked updates (batch i is client i mod num_clients's first texts)."""
MAX_INVERSION_STEPS = 10_000
"""Gradient-matching steps per update: about an hour at batch size 1 with MiniLM on 2 CPUs
(0.35 s a step); published attacks (DLG, TAG, LAMP) use a few thousand."""
MAX_EXAMPLES = 100_000
"""Members (and as many non-members) for membership inference."""
