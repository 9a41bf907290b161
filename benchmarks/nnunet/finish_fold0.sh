#!/bin/bash
# waits for the fold-0 training (pid in train.pid), then predicts the 40 val images and scores them
cd /work/nnunet && . ./env.sh
while kill -0 "$(cat train.pid)" 2>/dev/null; do sleep 10; done
grep -q "^rc=0" train.log || { echo "training failed"; exit 1; }
PRED_FLAGS=${PRED_FLAGS:-}
echo "predict start $(date -u +%FT%TZ) $(uptime)" > predict.log; echo "extra flags: $PRED_FLAGS" >> predict.log
s=$(date +%s.%N)
nice -n 5 nnUNetv2_predict -i fold0_val_images -o pred_fold0 -d 4 -c 3d_fullres -f 0 -tr nnUNetTrainer_1epoch -chk checkpoint_final.pth -device cpu $PRED_FLAGS >> predict.log 2>&1
rc=$?; echo "rc=$rc wall_s=$(echo "$(date +%s.%N) - $s" | bc)" >> predict.log
echo "predict end $(date -u +%FT%TZ) $(uptime)" >> predict.log
[ $rc = 0 ] || exit 1
python3 - <<'PY'
import json, re, subprocess, datetime
def wall(f): return float(re.search(r"^rc=0 wall_s=([\d.]+)", open(f).read(), re.M).group(1))
def loads(f, tag): return [float(x) for x in re.search(tag + r".*load average: ([\d.]+), ([\d.]+), ([\d.]+)", open(f).read(), re.M).groups()]
cpu = [l.split() for l in open("train_cpu.log") if l.strip()]
v = lambda p: subprocess.run(["/work/nnunet-venv/bin/python", "-c", f"import importlib.metadata as m; print(m.version('{p}'))"], capture_output=True, text=True).stdout.strip()
meta = {"method": "nnU-Net v2 3d_fullres", "dataset": "MSD Task04 Hippocampus, 200 cases (../shared/data/msd-hippocampus)",
  "fold": 0, "split": "medfcn split_datalist(items, seed=0, fold=0, num_folds=5) via splits_final.json",
  "trainer": "nnUNetTrainer_1epoch", "iterations": 250, "checkpoint": "checkpoint_final.pth", "device": "cpu",
  "tta": "--disable_tta" not in open("predict.log").read() and "mirroring (default)" or "disabled",
  "nnunetv2_version": v("nnunetv2"), "torch_version": v("torch"),
  "preprocess_wall_s": round(wall("preprocess.log"), 1), "train_wall_s": round(wall("train.log"), 1),
  "train_cpu_s_last_sample": float(cpu[-1][4]) if cpu else None, "predict_wall_s": round(wall("predict.log"), 1),
  "load_avg_train_start": loads("train.log", "^start"), "load_avg_train_end": loads("train.log", "^end"),
  "load_avg_predict_start": loads("predict.log", "predict start"), "load_avg_predict_end": loads("predict.log", "predict end"),
  "machine": "2 CPU cores shared with other jobs; nnU-Net run with nice -n 5",
  "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
json.dump(meta, open("meta.json", "w"), indent=2)
PY
cd /work/main && python benchmarks/nnunet/score.py /work/nnunet/pred_fold0 --out /work/nnunet/pred_fold0_scores.json --result benchmarks/results/nnunet_fold0.json --meta /work/nnunet/meta.json
