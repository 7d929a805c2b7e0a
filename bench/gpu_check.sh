#!/usr/bin/env bash
# The checks to run the day a GPU is lent (docs/benchmarks.md records what they printed):
#   1. the CUDA path with bf16 autocast and torch.compile: a small pretraining run that must learn;
#   2. DDP through torchrun (nccl) on one GPU;
#   3. a few minutes of the gpu preset's pretraining (~100M parameters), tokens/s and MFU printed.
# Works offline: the corpus is made from the Python standard library's own sources (as the tests
# do) unless LLMOS_GPU_CHECK_DATA names a prepared corpus. Uses $PY (default: .venv/bin/python if it
# exists, else python3) with this checkout on PYTHONPATH, so it needs torch, tokenizers, safetensors,
# numpy, tqdm, matplotlib and jinja2 there, nothing installed from this repository.
#
#   bench/gpu_check.sh                 # ~8 minutes; MINUTES=2 bench/gpu_check.sh for a shorter step 3
# Without a CUDA GPU it says so and exits 3, having changed nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
MINUTES=${MINUTES:-4}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "gpu_check: no CUDA GPU is visible to torch here ($("$PY" -c 'import torch; print("torch", torch.__version__)' 2>/dev/null || echo "no torch for $PY")): nothing to check. Run it on a machine with a GPU." >&2
  exit 3
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export LLMOS_HOME="$WORK/home"
"$PY" - <<'EOF'
import torch
from llmos.perf import describe_machine, matmul_peak_flops
print("== gpu_check:", torch.cuda.get_device_name(), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
print("host:", describe_machine())
for dtype in (torch.bfloat16, torch.float32):
    print(f"measured {dtype} matmul peak: {matmul_peak_flops('cuda', dtype, seconds=2.0) / 1e12:.0f} TFLOP/s")
EOF

DATA=${LLMOS_GPU_CHECK_DATA:-}
if [ -z "$DATA" ]; then
  DATA="$WORK/corpus"
  mkdir -p "$WORK/text"
  "$PY" - "$WORK/text" <<'EOF'
import sys, sysconfig
from pathlib import Path
out = Path(sys.argv[1])
for path in sorted(Path(sysconfig.get_paths()["stdlib"]).rglob("*.py")):
    text = path.read_text(encoding="utf-8", errors="replace")
    if len(text) > 2000:
        (out / f"{len(list(out.iterdir())):05d}.txt").write_text(text, encoding="utf-8")
EOF
  "$PY" -m llmos.cli data prepare --from "$WORK/text" --out "$DATA" --val-fraction 0.02
fi
"$PY" -m llmos.cli tokenizer train --data "$DATA" --vocab-size 8192 --out "$WORK/tok8k.json"

echo "== 1. CUDA, bf16 autocast, torch.compile: 200 steps of a 4-layer model"
"$PY" -m llmos.cli pretrain --data "$DATA" --tokenizer "$WORK/tok8k.json" --out "$WORK/cuda" --device cuda \
  --dtype bf16 --compile --depth 4 --steps 200 --batch-size 32 --seq-len 512 --eval-every 100 --log-every 20
"$PY" - "$WORK/cuda" <<'EOF'
import sys
from llmos.train.loop import read_metrics
rows = read_metrics(f"{sys.argv[1]}/metrics.jsonl")
losses = [r["loss"] for r in rows if "loss" in r]
assert losses[-1] < losses[0] - 2, f"the CUDA run did not learn: loss {losses[0]:.3f} -> {losses[-1]:.3f}"
print(f"ok: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
EOF

echo "== 2. DDP through torchrun (nccl), one GPU"
TORCHRUN=$("$PY" -c 'import sys, pathlib; print(pathlib.Path(sys.executable).parent / "torchrun")')
"$TORCHRUN" --standalone --nproc_per_node=1 -m llmos.cli pretrain --data "$DATA" --tokenizer "$WORK/tok8k.json" \
  --out "$WORK/ddp" --device cuda --depth 4 --steps 50 --batch-size 32 --seq-len 512 --eval-every 50 --log-every 10
"$PY" -c "import json, sys; c = json.load(open('$WORK/ddp/config.json')); assert c['world_size'] == 1; print('ok: torchrun world size', c['world_size'])"

echo "== 3. the gpu preset's pretraining for $MINUTES minutes"
"$PY" -m llmos.cli tokenizer train --data "$DATA" --vocab-size 32768 --out "$WORK/tok32k.json"
"$PY" - "$DATA" "$WORK/tok32k.json" "$WORK/gpu" "$MINUTES" <<'EOF'
import json, statistics, sys
from dataclasses import replace
from llmos.speedrun import PRESETS
from llmos.train.loop import read_metrics
from llmos.train.pretrain import DataArgs, pretrain
data, tok, out, minutes = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
preset = PRESETS["gpu"]
result = pretrain(preset.model, replace(preset.train, minutes=minutes, device="cuda"),
                  DataArgs(data=data, tokenizer=tok, out=out))
rows = [r for r in read_metrics(f"{out}/metrics.jsonl") if "tok_per_s" in r]
steady = rows[len(rows) // 4:]
tok_s = statistics.median(r["tok_per_s"] for r in steady)
mfu = statistics.median(r["mfu"] for r in steady)
flops = json.load(open(f"{out}/config.json"))["flops_per_token"]
print(f"gpu preset: {result['params']:,} params, {result['step']} steps in {minutes:g} minutes "
      f"(plan {result.get('plan')}), {result['dtype']}, val bpb {result['val_bpb']:.4f}")
print(f"median {tok_s:,.0f} tokens/s; MFU {mfu:.1%} of the measured bf16 matmul peak; "
      f"{tok_s * flops / 989e12:.1%} of H100/H200 SXM's 989 TFLOP/s dense bf16")
EOF
echo "== gpu_check: all passed"
