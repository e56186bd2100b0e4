"""Where the pipeline's files live, relative to the repository root: named once.

dvc.yaml is the map of files; the tools around the pipeline (review page, loop, label tools,
predict, export) default to the same paths through these names, and a test checks that dvc.yaml's
stage commands pass exactly these paths.
"""

PARAMS = "params.yaml"
SAMPLE = "data/raw/sample"  # the embedded synthetic dataset (params.yaml prepare.data_dir)
REFERENCE_RECIPE = "recipes/reference.yaml"  # the evaluate report lists params that differ
DECISIONS = "data/labels/decisions.csv"  # the git-tracked label decisions (hand-edited data)
VALIDATION = "data/labels/validation.csv"  # pool images a person labeled to validate on
PREPARED = "data/prepared"
CLEAN = "data/clean"
TABLES = "data/3lc/chimuffin/datasets/chimuffin/tables"
RUN = "data/3lc/chimuffin/runs/train"
MODEL = "models/best.pth"
ONNX = "models/model.onnx"
TRAIN_METRICS = "metrics/train"
EVAL = "metrics/eval"
PREDICTIONS = "metrics/eval/predictions.parquet"  # one row per image (evaluate)
EMBED = "data/embed"
EMBED_PLOT = "metrics/embedding.png"
SUGGEST = "data/suggest"
PULLED_3LC = "data/3lc-pulled"
