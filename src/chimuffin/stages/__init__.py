"""Stage entry points, one module per stage of dvc.yaml (run through src/stage.py)."""
