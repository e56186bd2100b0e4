#!/usr/bin/env bash
# Pool labels accepted by the loop, on the real data: the time-to-accuracy protocol's way to
# grow the training set.
# In a fresh clone of HEAD (nothing here is touched):
#   label files = time_to_accuracy.py --export-split (oracle rows; 100 of them validate; the
#   protocol's validation rows are left out, so they are unlabeled pool images here);
#   params: the real data, tlc off, train = RECIPE with EPOCHS;
#   dvc repro suggest (timed) -> chimuffin labels accept --min-score MIN_SCORE --require-agreement
# then copies data/labels/decisions.csv to OUT, for time_to_accuracy.py --decisions OUT.
# Usage: benchmarks/loop_labels.sh OUT [MIN_SCORE=0.9] [RECIPE=reference] [EPOCHS=30] [DEST]
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "$1")
min_score=${2:-0.9}
recipe=${3:-reference}
epochs=${4:-30}
dest=${5:-$(mktemp -d)/chimuffin}
data=${CHIMUFFIN_REAL_DATA:-$repo/../shared/data/chihuahua-muffin}
data=$(realpath "$data")
export PATH="$repo/.venv/bin:$PATH"
git clone -q "$repo" "$dest"
cd "$dest"
python benchmarks/time_to_accuracy.py --data "$data" --export-split data/labels
python - "$data" "$recipe" "$epochs" <<'PY'
import sys
import yaml
from chimuffin.config import read_recipe
data, recipe, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3])
params = yaml.safe_load(open("params.yaml"))
params["prepare"].update({"data_dir": data, "val_fraction": 0.0})
params["tlc"]["enabled"] = False
params["train"] = read_recipe(f"recipes/{recipe}.yaml")  # merged onto its base
params["train"]["epochs"] = epochs
yaml.safe_dump(params, open("params.yaml", "w"), sort_keys=False)
PY
echo "== dvc repro suggest ($recipe, $epochs epochs, on $data)"
/usr/bin/time -f "dvc repro suggest: %e s wall, %U s user CPU" dvc repro -q suggest
cat metrics/train/metrics.json 2>/dev/null || true
echo "== chimuffin labels accept --min-score $min_score --require-agreement"
chimuffin labels accept --min-score "$min_score" --require-agreement
# How right is the accepting rule? The protocol's validation rows are unlabeled pool images here
# (never trained on, never voting), so their suggestions measure it; nothing is chosen by them.
python - "$data/reviewed_labels.csv" "$min_score" <<'PY'
import sys
import pandas as pd
from chimuffin.config import load_params
from chimuffin.labels.rows import read_path_labels
from chimuffin.report.metrics import wilson_interval
truth = pd.Series(read_path_labels(sys.argv[1], load_params().base.classes))
s = pd.read_parquet("data/suggest/suggestions.parquet")
s = s[s["path"].isin(truth.index)]
ok = s[(s["score"] >= float(sys.argv[2])) & s["agree"]]
right = int((ok["label"].to_numpy() == truth[ok["path"]].to_numpy()).sum())
lo, hi = wilson_interval(right, len(ok))
print(f"accepting rule on {len(s)} held-out reviewed pool images: accepts {len(ok)} "
      f"({len(ok) / len(s):.1%}), right {right} = {right / max(len(ok), 1):.3f} [{lo:.3f}, {hi:.3f}]")
PY
cp data/labels/decisions.csv "$out"
echo "wrote $out; repository: $dest"
