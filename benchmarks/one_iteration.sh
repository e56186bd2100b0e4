#!/usr/bin/env bash
# One improvement iteration on the embedded sample, as docs/real-data.md tells it,
# in a fresh clone of this repository's HEAD (nothing here is touched):
#   dvc repro (timed) -> commit -> the first review page checked against the true labels ->
#   the review queue's top 40 pool requests answered by the
#   sample's true pool labels (the person) -> dvc exp run (timed) -> dvc metrics diff -> commit.
# Usage: benchmarks/one_iteration.sh [DEST]   (default: a new temp dir; needs `make setup`)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$(mktemp -d)/chimuffin}
export PATH="$repo/.venv/bin:$PATH"
git clone -q "$repo" "$dest"
cd "$dest"
git config user.email story@example.com && git config user.name story

echo "== dvc repro"
/usr/bin/time -f "dvc repro: %e s wall, %U s user CPU" dvc repro
git add -A && git commit -qm "baseline: dvc repro on the sample"

echo "== the first review page against the sample's true pool labels"
python - <<'EOF'
import pandas as pd

pages = pd.read_parquet("data/suggest/pages.parquet")
truth = pd.read_csv("data/raw/sample/pool_labels.csv").set_index("relative_path")["label"]
first = pages[pages["page"] == pages["page"].min()]
right = int((first["label"] == first["path"].map(truth)).sum())
print(f"first page: proposes {first['label'].iloc[0]} (page score "
      f"{first['page_score'].iloc[0]:.2f}), {right} of {len(first)} proposals right; all pages: "
      f"{int((pages['label'] == pages['path'].map(truth)).sum())} of {len(pages)} right")
EOF

echo "== answer the review queue's top 40 pool requests"
python - <<'EOF'
import pandas as pd
from chimuffin.labels import locked
from chimuffin.labels.rows import Decision, merge_decisions

queue = pd.read_parquet("data/suggest/review_queue.parquet")
truth = pd.read_csv("data/raw/sample/pool_labels.csv").set_index("relative_path")["label"]
asked = queue[queue["kind"] == "pool"].head(40)
answers = [Decision(p, truth[p], "human", "review page") for p in asked["path"]]
# written as the review page writes: under the label file's lock
locked.update("data/labels/decisions.csv", ["chihuahua", "muffin"],
              lambda old: merge_decisions(old, answers)[0])
right = int((asked["proposed"].to_numpy() == truth[asked["path"]].to_numpy()).sum())
print(f"{len(answers)} new decisions: {pd.Series([a.label for a in answers]).value_counts().to_dict()}"
      f"; the queue's proposal was right for {right}")
EOF

echo "== dvc exp run"
/usr/bin/time -f "dvc exp run: %e s wall, %U s user CPU" dvc exp run -n label-40-pool
echo "== dvc metrics diff"
dvc metrics diff
git add data/labels/decisions.csv dvc.lock
git commit -qm "label 40 pool images from the review queue"
dvc status
echo "repository: $dest"
