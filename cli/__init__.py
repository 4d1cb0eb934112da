"""Command-line helpers shared by the Beam commands (beam_runner.py) and the trainer (model/train.py)."""
