#!/usr/bin/env bash
# The checks that need a GPU, as one script for a lent GPU machine (bench/README.md, "On a GPU").
# Expects: .whl/ with the wheels its image lacks (torch-pruning, optuna and optuna's needs) and
# .fmnist/ with Debian's Fashion-MNIST files, both carried beside the checkout; results go to $OUT.
# Trains the ResNet-56 zoo weights (12 and 30 epochs, side by side), runs a 60-evaluation search and a
# latency-budget search (profiling and the measured check on CUDA; on the H200 a 28x28 ResNet-20 cannot
# go below ~87% of its latency, so the budget is 92%), and times a ResNet-50 evaluation.
set -u
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
# autoprune itself (envs/agents/search_spaces become autoprune.* only when installed), with its command.
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade --target /tmp/site . || exit 1
export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
mkdir -p /usr/share/datasets/fashion-mnist && cp .fmnist/*.gz /usr/share/datasets/fashion-mnist/
R=/tmp/res; mkdir -p $R
trap 'tar czf $OUT/results.tgz -C /tmp res' EXIT
nvidia-smi -L
python3 -c "import torch, torchvision, typer, rich, torch_pruning, optuna; print('torch', torch.__version__, torchvision.__version__, 'typer', typer.__version__, 'optuna', optuna.__version__)"

# TRAIN=0 skips the training (which shares the GPU with, and so slows, the timed steps below).
[ "${TRAIN:-1}" = 1 ] && for e in 12 30; do
  (time timeout 400 autoprune train resnet56 --epochs $e --device cuda \
     --out $R/e$e/resnet56-fashion-mnist.pt) > $R/train-e$e.log 2>&1 &
done
(time timeout ${SEARCH_S:-200} autoprune search --budget 50%FLOPs resnet56 --device cuda --evals ${EVALS:-60} --out $R/search-r56) > $R/search-r56.log 2>&1
tail -25 $R/search-r56.log
(time timeout 180 autoprune search --budget 92%latency resnet20 --device cuda --evals 20 --out $R/search-lat) > $R/search-lat.log 2>&1
tail -25 $R/search-lat.log
timeout 60 python3 bench/resnet50_eval_cost.py --device cuda --threads 4 --batch 256 --batches 10 \
  --out $R/resnet50_eval_cost-cuda.json 2>&1 | tail -22
wait
tail -n 16 $R/train-e*.log 2>/dev/null
